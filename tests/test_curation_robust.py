"""No single source can stall or stop a stage: time budgets, crashed workers, failure reasons, --retry-failed."""

import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
from stage_outputs import tar_keys

from viclip.curation import clips, source_shards
from viclip.curation.clips import CurationConfig, process_source
from viclip.curation.pool import TimeBudget
from viclip.curation.sources import Source, list_folder
from viclip.curation.stages import run_stage
from viclip.curation.stats import summarize
from viclip.curation.table import read_tables
from viclip.data.tars import ShardWriter
from viclip.testing import corpus
from viclip.testing import videos as tv

W, H, FPS = 96, 64, 25
N_VIDEOS, PER_SHARD = 6, 3  # shards [v0 v1 v2] [v3 v4 v5]
HANG, CRASH, SLOW = "v1", "v4", "v2"
# Margins for a busy machine (the suite must pass beside other jobs): the slow source sleeps longer than the
# base budget alone, and a 2.4 s source gets 16 s once its duration is known (normally done in about 1 s).
SLOW_SECONDS = 5.0
BUDGET = TimeBudget(base=4.0, factor=5.0)  # 4 s until the 2.4 s duration is known, 16 s after


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Six videos of two moving scenes each (2.4 s; the second scene still in every fourth), v0 instead
    four 3 s scenes with one keyframe per 10 s, so that its cuts fall between keyframes."""
    folder = tmp_path_factory.mktemp("sources")
    kinds = ["testsrc2", "mandelbrot", "testsrc2", "smptebars"]
    for i in range(1, N_VIDEOS):
        a = tv.pan_frames(30, W, H, 0.3 + 0.1 * (i % 3), seed=i)
        b = tv.lavfi_frames(kinds[i % 4], 1.2, W, H, FPS)
        tv.write_video(folder / f"v{i}.mp4", np.concatenate([a, b]), FPS)
    per = round(corpus.SCENE_SECONDS * FPS)
    corpus.encode(folder / "v0.mp4", (corpus.scene_frames(k, k * per, per, W, H) for k in range(4)), FPS,
                  options=corpus.long_gop_options(corpus.LONG_GOP_SECONDS, FPS))
    return list_folder(folder)


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=0, progress=False)
    assert summary.done == 2 and summary.failed == 0
    return out


def hooked_split_video(original):
    """One source hangs, one kills its worker with a segfault, one is slower than the base budget alone."""
    def split_video(source, path, cfg):
        if source.video_id == HANG:
            time.sleep(3600)  # a decoder spinning forever
        if source.video_id == CRASH:
            faulthandler.disable()  # pytest's handler would print this worker's stack
            os.kill(os.getpid(), signal.SIGSEGV)
        if source.video_id == SLOW:
            time.sleep(SLOW_SECONDS)  # within budget only because the duration was reported
        return original(source, path, cfg)
    return split_video


@pytest.fixture(scope="module")
def damaged(sources, tmp_path_factory):
    """A run with the hooks (2 workers), its summary and its wall time."""
    out = tmp_path_factory.mktemp("damaged")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clips, "split_video", hooked_split_video(clips.split_video))
        started = time.monotonic()
        summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=2, budget=BUDGET, progress=False)
    return out, summary, time.monotonic() - started


def clip_rows(out: Path) -> list[tuple]:
    """(video_id, clip_index, start, end, status, reason) of every row, in table order."""
    cols = ["video_id", "clip_index", "start", "end", "status", "reason"]
    return [tuple(r.values()) for r in read_tables([out]).select(cols).to_pylist()]


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def copy_of(out: Path, tmp_path: Path) -> Path:
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run"


def assert_complete(out: Path, reference: Path) -> None:
    """The clean run's rows in source order, each kept clip once in the tars, sizes.json and stats agreeing."""
    assert clip_rows(out) == clip_rows(reference)
    table = read_tables([out])
    kept_keys = [r["clip_key"] for r in table.to_pylist() if r["status"] == "kept"]
    keys = tar_keys(out)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(kept_keys)
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*.stats.json"))]
    assert [(s["failed"], s["failed_by_reason"]) for s in stats] == [(0, {}), (0, {})]
    assert json.loads((out / "sizes.json").read_text()) == {s["tar"]: s["kept"] for s in stats}
    assert not (out / ".work").exists() and not list(out.glob(".*tmp*"))
    assert not multiprocessing.active_children()


def test_a_hung_and_a_crashed_source_fail_alone(damaged, reference):
    out, summary, seconds = damaged
    assert summary.done == 2 and summary.failed == 2
    assert summary.failed_by_reason == {"timeout": 1, "crashed": 1}
    rows = {(r["video_id"], r["clip_index"]): r for r in read_tables([out]).to_pylist()}
    hung, crashed = rows[(HANG, -1)], rows[(CRASH, -1)]
    assert (hung["status"], hung["reason"]) == ("failed", "timeout") and "budget of 16 s" in hung["error"]
    assert (crashed["status"], crashed["reason"]) == ("failed", "crashed") and "SIGSEGV" in crashed["error"]
    others = [r for r in clip_rows(reference) if r[0] not in (HANG, CRASH)]
    assert [r for r in clip_rows(out) if r[0] not in (HANG, CRASH)] == others  # the slow one included
    assert [r[4] for r in others if r[0] == "v0"] == ["kept"] * 4  # the long-GOP source, cut between keyframes
    stats = [json.loads((out / f"0000{s}.stats.json").read_text()) for s in (0, 1)]
    assert [s["failed_by_reason"] for s in stats] == [{"timeout": 1}, {"crashed": 1}]
    assert summarize(read_tables([out]))["failed_by_reason"] == {"timeout": 1, "crashed": 1}
    assert sorted(tar_keys(out)) == sorted(r["clip_key"] for r in rows.values() if r["status"] == "kept")
    assert seconds < 600  # the hang cost its budget (16 s), not the hour it sleeps
    assert not multiprocessing.active_children()  # every worker, replacements included, reaped


def test_rerun_of_a_finished_stage_redoes_nothing(damaged, sources, tmp_path, monkeypatch):
    out = copy_of(damaged[0], tmp_path)
    before = mtimes(out)
    monkeypatch.setattr("viclip.curation.pool.process_source", pytest.fail)
    summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=2, budget=TimeBudget(5.0, 1.0),
                        progress=False)  # another budget is accepted: it is not part of the config
    assert (summary.skipped, summary.done, summary.videos) == (2, 0, 0)
    assert mtimes(out) == before


def test_retry_failed_adds_the_missing_clips_once(damaged, sources, reference, tmp_path):
    out = copy_of(damaged[0], tmp_path)
    old = {(r["video_id"], r["clip_index"]): r["clip_key"] for r in read_tables([out]).to_pylist()
           if r["status"] == "kept"}
    summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, retry_failed=True, progress=False)
    assert (summary.retried, summary.done, summary.videos, summary.failed) == (2, 0, 2, 0)
    assert_complete(out, reference)
    new = {(r["video_id"], r["clip_index"]): r["clip_key"] for r in read_tables([out]).to_pylist()
           if r["status"] == "kept"}
    assert {k: new[k] for k in old} == old  # clips kept before keep their keys
    assert {v for v, _ in set(new) - set(old)} == {HANG, CRASH}

    before = mtimes(out)  # nothing failed any more: a second retry does nothing
    again = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, retry_failed=True, progress=False)
    assert (again.retried, again.skipped, again.videos) == (0, 2, 0) and mtimes(out) == before


class Killed(Exception):
    """Stands for SIGKILL at one point of a retry."""


def kill_after_tar(monkeypatch):
    """Killed once the new tar of the first shard is in place, before its table."""
    def write_table(table, path):
        raise Killed(path)
    monkeypatch.setattr(source_shards, "write_table", write_table)


def kill_before_stats(monkeypatch):
    """Killed once the new tar and table of the first shard are in place, before its stats."""
    original = source_shards.atomic_json

    def atomic_json(path, obj):
        if str(path).endswith(".stats.json"):  # a local path or an fsspec URL
            raise Killed(path)
        original(path, obj)
    monkeypatch.setattr(source_shards, "atomic_json", atomic_json)


def kill_in_writer(monkeypatch):
    """Killed while copying the first shard's kept clips into its new tar."""
    original, calls = ShardWriter.write, []

    def write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed("writer")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ShardWriter, "write", write)


@pytest.mark.parametrize("kill", [kill_after_tar, kill_before_stats, kill_in_writer])
def test_retry_killed_midway_completes_when_rerun(kill, damaged, sources, reference, tmp_path):
    out = copy_of(damaged[0], tmp_path)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        kill(mp)
        run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, retry_failed=True, progress=False)
    assert not multiprocessing.active_children()  # the exception stopped the workers
    run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, retry_failed=True, progress=False)
    assert_complete(out, reference)


def test_failed_rows_name_their_reason(tmp_path, sources, monkeypatch):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    with av.open(str(tmp_path / "audio.mp4"), "w") as c:  # a container without video
        stream = c.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    cases = {"missing": str(tmp_path / "nothing.mp4"), "undecodable": str(tmp_path / "random.mp4"),
             "no_video_stream": str(tmp_path / "audio.mp4")}
    for reason, uri in cases.items():
        for report in (None, [].append):  # scanned at once, or probed first as in a worker
            (row,) = process_source(Source("x", uri), CurationConfig(), report).rows
            assert (row["status"], row["reason"]) == ("failed", reason), row["error"]

    import fsspec

    def unreachable(*args, **kwargs):
        raise ConnectionError("network is unreachable")
    monkeypatch.setattr(fsspec, "open", unreachable)
    (row,) = process_source(Source("x", "s3://bucket/x.mp4"), CurationConfig()).rows
    assert row["reason"] == "download_failed" and "unreachable" in row["error"]

    def bug(*args):
        raise KeyError("a bug")
    monkeypatch.setattr(clips, "split_video", bug)
    (row,) = process_source(sources[0], CurationConfig()).rows
    assert row["reason"] == "error" and "a bug" in row["error"]


def test_time_budget_option_is_checked():
    assert TimeBudget(10.0, 2.0).seconds(3.0) == 16.0 and TimeBudget(10.0, 2.0).seconds(None) == 10.0
    with pytest.raises(ValueError, match="--budget-base"):
        TimeBudget(0.0)
    with pytest.raises(ValueError, match="--budget-factor"):
        TimeBudget(10.0, -1.0)
