"""Staged runs: failed rows for bad files, kill-and-resume without loss or duplicates, array tasks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from stage_outputs import tar_keys

from viclip.curation import scenes
from viclip.curation.clips import CurationConfig
from viclip.curation.scenes import SceneConfig
from viclip.curation.sources import list_folder
from viclip.curation.stages import run_stage
from viclip.curation.table import read_tables
from viclip.testing import videos as tv

ROOT = Path(__file__).resolve().parents[1]
W, H, FPS = 96, 64, 25
N_VIDEOS = 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Eight videos of two moving scenes (the second still in every fourth) and one corrupt file."""
    folder = tmp_path_factory.mktemp("sources")
    kinds = ["testsrc2", "mandelbrot", "testsrc2", "smptebars"]
    for i in range(N_VIDEOS):
        a = tv.pan_frames(30, W, H, 0.3 + 0.1 * (i % 3), seed=i)
        b = tv.lavfi_frames(kinds[i % 4], 1.2, W, H, FPS)
        tv.write_video(folder / f"v{i}.mp4", np.concatenate([a, b]), FPS)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return folder


def clip_set(out: Path) -> list[tuple]:
    rows = read_tables([out]).select(["video_id", "clip_index", "status", "reason", "clip_key"]).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    summary = run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    assert summary.done == N_VIDEOS + 1 and summary.failed == 1
    return out


def test_corrupt_file_is_a_failed_row_and_the_run_goes_on(reference):
    table = read_tables([reference])
    broken = [r for r in table.to_pylist() if r["video_id"] == "broken"]
    assert len(broken) == 1 and broken[0]["status"] == "failed" and broken[0]["error"]
    kept = [r for r in table.to_pylist() if r["status"] == "kept"]
    assert len(kept) == 2 * N_VIDEOS - 2  # the two smptebars scenes are still
    stats = json.loads((reference / "00000.stats.json").read_text())  # "broken" sorts first
    assert stats["failed"] == 1 and stats["kept"] == 0 and stats["tar"] is None
    sizes = json.loads((reference / "sizes.json").read_text())
    assert sum(sizes.values()) == len(kept) and sorted(tar_keys(reference)) == sorted(r["clip_key"] for r in kept)
    assert len({r["clip_key"] for r in kept}) == len(kept)


def test_killed_run_resumes_without_redoing_or_losing_clips(sources, reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools/split_scenes.py"), "--videos", str(sources), "--out", str(out),
           "--videos-per-shard", "1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while not list(out.glob("*.stats.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and its pool worker, mid-run
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.stats.json")}
    assert 1 <= len(done_before) < N_VIDEOS + 1, "the run was not interrupted midway"
    unfinished = next(s for s in range(N_VIDEOS + 1) if f"{s:05d}.stats.json" not in done_before)
    (out / f".{unfinished:05d}.parquet.tmp999-0").write_bytes(b"half a table")  # as if killed mid-write

    summary = run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    assert summary.skipped == len(done_before) and summary.done == N_VIDEOS + 1 - len(done_before)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.stats.json") if p.name in done_before} == done_before
    assert clip_set(out) == clip_set(reference)
    assert sorted(tar_keys(out)) == sorted(tar_keys(reference))  # no duplicate, no missing clip
    assert json.loads((out / "sizes.json").read_text()) == json.loads((reference / "sizes.json").read_text())
    assert not (out / ".work").exists() and not list(out.glob(".*tmp*"))


def test_array_tasks_share_the_shards(sources, reference, tmp_path):
    out = tmp_path / "array"
    first = run_stage(list_folder(sources), out, videos_per_shard=2, task=0, num_tasks=2, workers=0, progress=False)
    assert first.shards == 3 and not (out / "sizes.json").exists()  # shards 0, 2, 4 of 5
    second = run_stage(list_folder(sources), out, videos_per_shard=2, task=1, num_tasks=2, workers=2, progress=False)
    assert second.shards == 2 and (out / "sizes.json").exists()
    rows = [r[:4] for r in clip_set(out)]
    assert rows == [r[:4] for r in clip_set(reference)]


def test_rerun_with_other_settings_is_refused(sources, reference):
    with pytest.raises(ValueError, match="config"):
        run_stage(list_folder(sources), reference, CurationConfig(scenes=SceneConfig(threshold=30.0)),
                  videos_per_shard=1, workers=0, progress=False)
    table = pq.read_table(reference / "00001.parquet")
    assert set(table.column("shard").to_pylist()) == {1}


def test_a_directory_written_before_the_detector_switch_resumes_under_the_defaults(sources, reference, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(reference, out)
    record = json.loads((out / "config.json").read_text())
    for name in scenes.SETTINGS_INTRODUCED:  # as an older viclip wrote it
        del record["config"]["scenes"][name]
    (out / "config.json").write_text(json.dumps(record))
    summary = run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    assert summary.done == 0 and summary.skipped == summary.shards  # resumed: nothing to redo
    with pytest.raises(ValueError, match="config"):  # it ran ContentDetector: another detector is refused
        run_stage(list_folder(sources), out, CurationConfig(scenes=SceneConfig(detector="adaptive")),
                  videos_per_shard=1, workers=0, progress=False)


def test_rerun_removes_a_work_dir_left_behind_a_done_shard(sources, tmp_path):
    out = tmp_path / "run"
    run_stage(list_folder(sources), out, videos_per_shard=N_VIDEOS, workers=0, progress=False)
    leftover = out / ".work" / "00000"  # killed after the stats file, before the cleanup
    leftover.mkdir(parents=True)
    (leftover / "00000.tar").write_bytes(b"half a tar")
    summary = run_stage(list_folder(sources), out, videos_per_shard=N_VIDEOS, workers=0, progress=False)
    assert summary.done == 0 and summary.skipped == summary.shards
    assert not (out / ".work").exists()


def test_a_stage_ends_with_a_human_summary(sources, reference):
    summary = run_stage(list_folder(sources), reference, videos_per_shard=1, workers=0, progress=False)
    assert str(summary).startswith(f"0 shards done, {N_VIDEOS + 1} done before (of {N_VIDEOS + 1}); 0 videos")
    out = reference.parent / "summary"
    printed = subprocess.run([sys.executable, str(ROOT / "tools/split_scenes.py"), "--videos", str(sources), "--out",
                              str(out), "--videos-per-shard", "4", "--workers", "1", "--no-progress"],
                             check=True, cwd=ROOT, capture_output=True, text=True).stdout
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"3 shards done, 0 done before (of 3); {N_VIDEOS + 1} videos: {2 * N_VIDEOS - 2} clips "
                           "kept, 1 failed (undecodable 1);") and last.endswith(f"output in {out}")
