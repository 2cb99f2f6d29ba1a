"""Storage anywhere: atomic writes, ShardWriter, curation stages and make_shards on fsspec URLs.

fsspec's ``memory://`` stands for an object store (no rename; an object appears when its upload
completes) and ``file://`` for a URL that is a local disk. A kill is an exception injected mid-run:
what it leaves must be whole files only, and a rerun must give the outputs of an uninterrupted run.
"""

import json
import tarfile
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from viclip.atomic import atomic_path, atomic_write
from viclip.curation import source_shards, stages
from viclip.curation.sources import list_folder
from viclip.curation.stages import run_stage
from viclip.curation.table import read_tables
from viclip.curation.writer import make_shards
from viclip.data.tars import ShardWriter, iter_tar_samples, open_shard
from viclip.testing import videos as tv

W, H, FPS = 96, 64, 25
N_VIDEOS = 3


class Killed(Exception):
    """Stands for SIGKILL in the middle of a stage."""


@pytest.fixture
def memory_root():
    """A fresh ``memory://`` directory, removed afterwards (the memory filesystem is one per process)."""
    root = f"memory://viclip-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def listing(root: str) -> dict[str, bytes]:
    """Every file under ``root`` (any protocol), by its name relative to ``root``."""
    fs, base = fsspec.core.url_to_fs(root)
    return {p[len(base.rstrip("/")) + 1:]: fs.cat_file(p) for p in fs.find(base)}


def test_atomic_write_to_an_object_store_publishes_whole_files_only(memory_root):
    assert atomic_write(f"{memory_root}/a/b.json", '{"x": 1}') == f"{memory_root}/a/b.json"
    with pytest.raises(Killed), atomic_path(f"{memory_root}/a/c.bin") as tmp:
        tmp.write_bytes(b"half")
        raise Killed
    assert listing(memory_root) == {"a/b.json": b'{"x": 1}'}  # no c.bin, no temporary name


def test_atomic_path_on_a_file_url_renames_in_place(tmp_path):
    url = f"file://{tmp_path}/out/t.txt"
    with atomic_path(url) as tmp:
        assert tmp.parent == tmp_path / "out"  # a temporary name beside the target, renamed over it
        tmp.write_text("done")
    assert (tmp_path / "out" / "t.txt").read_text() == "done"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["t.txt"]


def test_shard_writer_to_an_object_store(memory_root):
    out = f"{memory_root}/shards"
    with pytest.raises(Killed), ShardWriter(out, max_samples=2) as w:
        for i in range(3):
            w.write(f"mp4-{i}".encode(), f"caption {i}", {"i": i})
        raise Killed  # the third sample's tar is unfinished
    assert sorted(listing(out)) == ["00000.tar"]  # the finished tar only, and no sizes.json
    with ShardWriter(out, max_samples=2) as w:
        for i in range(3):
            w.write(f"mp4-{i}".encode(), f"caption {i}", {"i": i})
    assert json.loads(listing(out)["sizes.json"]) == {"00000.tar": 2, "00001.tar": 1}
    with open_shard(f"{out}/00001.tar") as f:
        assert [s["txt"] for s in iter_tar_samples(f)] == [b"caption 2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    for i in range(N_VIDEOS):
        a = tv.pan_frames(30, W, H, 0.3 + 0.1 * i, seed=i)
        b = tv.lavfi_frames("testsrc2", 1.2, W, H, FPS)
        tv.write_video(folder / f"v{i}.mp4", np.concatenate([a, b]), FPS)
    return folder


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """An uninterrupted run on a local directory."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    assert summary.done == N_VIDEOS and summary.kept == 2 * N_VIDEOS
    return out


def comparable(files: dict[str, bytes]) -> dict[str, object]:
    """A stage's outputs with what legitimately differs between runs taken out: timings in stats, and
    parquet compared as rows (its footer names the writer); tars compared byte for byte."""
    out: dict[str, object] = {}
    for name, data in files.items():
        if name.endswith(".stats.json"):
            out[name] = {k: v for k, v in json.loads(data).items() if k not in ("video_seconds", "cpu_seconds")}
        elif name.endswith(".parquet"):
            out[name] = pq.read_table(pa.BufferReader(data)).to_pylist()
        else:
            out[name] = data
    return out


def kill_at_table(monkeypatch, call: int) -> None:
    """Raise in the ``call``-th table write of a stage: that shard's tar is out, its table and stats are not."""
    original, calls = source_shards.write_table, []

    def write_table(table, path):
        calls.append(path)
        if len(calls) == call:
            raise Killed
        original(table, path)
    monkeypatch.setattr(source_shards, "write_table", write_table)


@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_a_stage_killed_midway_on_a_url_resumes_to_the_same_outputs(protocol, sources, reference, memory_root,
                                                                     tmp_path, monkeypatch):
    out = f"{memory_root}/clips" if protocol == "memory" else f"file://{tmp_path}/clips"
    kill_at_table(monkeypatch, 2)
    with pytest.raises(Killed):
        run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    left = listing(out)
    assert "00000.stats.json" in left and "00001.stats.json" not in left and "sizes.json" not in left
    hidden = [n for n in left if any(part.startswith(".") for part in n.split("/"))]
    # no partial file under a final name; a local disk keeps the shard in progress in its hidden .work
    assert hidden == [] if protocol == "memory" else all(n.startswith(".work/") for n in hidden)
    with tarfile.open(fileobj=fsspec.open(f"{out}/00001.tar", "rb").open()) as tar:
        assert len(tar.getnames()) == 6  # the killed shard's tar went out whole (two clips), to be redone
    monkeypatch.undo()

    summary = run_stage(list_folder(sources), out, videos_per_shard=1, workers=0, progress=False)
    assert summary.skipped == 1 and summary.done == N_VIDEOS - 1
    assert comparable(listing(out)) == comparable(listing(f"file://{reference}"))  # hidden names included
    assert not stages.StageDir(out).work_root().exists()  # the local work files are gone too


def test_make_shards_killed_midway_to_an_object_store_resumes(reference, memory_root, monkeypatch):
    table = read_tables([reference])
    captions = table.set_column(table.schema.get_field_index("caption"), "caption",
                                [[f"clip {c}" for c in table["clip_id"].to_pylist()]])
    out = f"{memory_root}/train"
    original, written = ShardWriter.write, []

    def write(self, *args, **kwargs):
        if len(written) == 3:
            raise Killed
        written.append(args[1])
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ShardWriter, "write", write)
    with pytest.raises(Killed):
        make_shards(captions, reference, out, max_samples=2, progress=False)
    assert sorted(listing(out)) == ["00000.tar"]  # the finished tar; no sizes.json claims completeness
    monkeypatch.undo()

    sizes = make_shards(captions, f"file://{reference}", out, max_samples=2, progress=False)
    assert sizes == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 2}
    assert json.loads(listing(out)["sizes.json"]) == sizes
    texts = []
    for name in sizes:
        with open_shard(f"{out}/{name}") as f:
            texts += [s["txt"].decode() for s in iter_tar_samples(f)]
    kept = captions.filter(pc.equal(captions["status"], "kept"))
    assert sorted(texts) == sorted(kept["caption"].to_pylist())  # each kept clip once


def test_build_subset_writes_its_table_and_report_to_an_object_store(reference, memory_root):
    from viclip.curation.subsets import SubsetSpec, build_subset

    out = f"{memory_root}/subsets/random2.parquet"
    report = build_subset([reference], out, SubsetSpec("random", num=2, seed=0), progress=False)
    files = listing(f"{memory_root}/subsets")
    assert sorted(files) == ["random2.parquet", "random2.parquet.json"] and report.selected == 2
    assert pq.read_table(pa.BufferReader(files["random2.parquet"])).num_rows == 2
    assert json.loads(files["random2.parquet.json"])["selected"] == 2


def test_an_unknown_protocol_is_one_error_naming_the_url(reference, tmp_path):
    with pytest.raises(ValueError, match="nosuch://bucket/x.json: Protocol not known"):
        atomic_write("nosuch://bucket/x.json", "{}")
    with pytest.raises(ValueError, match="nosuch://bucket/clips"):
        run_stage([], "nosuch://bucket/clips", workers=0, progress=False)
