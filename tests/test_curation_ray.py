"""The Ray engine: the local engine's tables and clips, Ray's retry of a killed shard, failed rows for hung and
crashed sources, one model per actor (table stages and embed-clips), and SemDeDup's clusters as Ray tasks.
One small local Ray (2 CPUs) serves the module."""

import dataclasses
import functools
import json
import multiprocessing
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from stage_outputs import tar_keys

from viclip.commands import dedup_clips, embed_clips
from viclip.curation.dedup import find_duplicates_and_leaks
from viclip.curation.engine import LocalEngine, make_engine
from viclip.curation.pool import TimeBudget
from viclip.curation.semdedup import semantic_pairs
from viclip.curation.sources import Source, list_folder
from viclip.curation.stage_configs import DedupConfig, EmbedConfig, SemDedupConfig
from viclip.curation.stages import run_stage, run_table_stage
from viclip.curation.table import read_tables
from viclip.embeddings import run_embedding
from viclip.model import create_model, export_safetensors
from viclip.testing import videos as tv
from viclip.testing.embeddings import clustered_embeddings, write_embedding_shards

ray = pytest.importorskip("ray")
ray_workers = pytest.importorskip("ray_workers")

TESTS = Path(__file__).resolve().parent
W, H, FPS = 96, 64, 25
PER_SHARD = 2
BUDGET = TimeBudget(base=5.0, factor=4.0)  # a hang costs 15 s; a normal source (~1 s) has room on a busy machine


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def cluster(marks):
    """A local Ray whose workers load the test hooks; shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), ray_workers.MARKS: str(marks)},
                          "worker_process_setup_hook": "ray_workers.install_hooks"})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six videos of two scenes each (the second still in every fourth): three shards of two."""
    folder = tmp_path_factory.mktemp("sources")
    kinds = ["testsrc2", "mandelbrot", "testsrc2", "smptebars"]
    for i in range(6):
        a = tv.pan_frames(30, W, H, 0.3 + 0.1 * (i % 3), seed=i)
        tv.write_video(folder / f"v{i}.mp4", np.concatenate([a, tv.lavfi_frames(kinds[i % 4], 1.2, W, H, FPS)]), FPS)
    return folder


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_stage(list_folder(folder), out, videos_per_shard=PER_SHARD, workers=1, progress=False, engine=LocalEngine())
    return out


def renamed(sources: list[Source], names: dict[str, str]) -> list[Source]:
    """The sources with some video ids changed (a hook reads the id), their files the same."""
    return [Source(names.get(s.video_id, s.video_id), s.uri) for s in sources]


def outputs(out: Path) -> dict:
    """Every table row (less timings), every tar member with its bytes, the stats less timings, sizes.json."""
    rows = [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in read_tables([out]).to_pylist()]
    members = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            members.update({f"{tar.name}/{m.name}": t.extractfile(m).read() for m in t})
    stats = [{k: v for k, v in json.loads(p.read_text()).items() if k not in ("video_seconds", "cpu_seconds")}
             for p in sorted(out.glob("*.stats.json"))]
    return {"rows": rows, "members": members, "stats": stats, "sizes": json.loads((out / "sizes.json").read_text())}


def test_ray_gives_the_local_engines_tables_and_clips(cluster, folder, local, tmp_path):
    out = tmp_path / "ray"
    summary = run_stage(list_folder(folder), out, videos_per_shard=PER_SHARD, workers=1, progress=False,
                        engine=make_engine("ray"))
    assert (summary.done, summary.videos, summary.failed) == (3, 6, 0)
    assert outputs(out) == outputs(local)
    assert not (out / ".work").exists() and not list(out.glob(".*tmp*"))
    again = run_stage(list_folder(folder), out, videos_per_shard=PER_SHARD, workers=1, progress=False,
                      engine=LocalEngine())  # a rerun may switch engines: all done
    assert (again.skipped, again.done) == (3, 0)


def test_a_killed_ray_worker_costs_only_its_shard(cluster, folder, local, marks, tmp_path):
    out = tmp_path / "ray"
    sources = renamed(list_folder(folder), {"v3": "kill3"})  # the second video of shard 1
    reference = tmp_path / "reference"
    run_stage(sources, reference, videos_per_shard=PER_SHARD, workers=0, progress=False)  # no hooks here
    summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, progress=False,
                        engine=make_engine("ray"))
    killed = int((marks / "killed-kill3").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # the Ray worker is gone; Ray ran its shard again elsewhere
    assert (summary.done, summary.failed) == (3, 0)
    assert outputs(out) == outputs(reference)
    keys = tar_keys(out)
    assert len(keys) == len(set(keys)) == sum(json.loads((out / "sizes.json").read_text()).values())
    assert not (out / ".work").exists() and not list(out.glob(".*tmp*"))


def test_a_hung_and_a_crashed_source_are_failed_rows_under_ray(cluster, folder, local, tmp_path):
    out = tmp_path / "ray"
    sources = renamed(list_folder(folder), {"v1": "hang1", "v4": "crash4"})
    summary = run_stage(sources, out, videos_per_shard=PER_SHARD, workers=1, budget=BUDGET, progress=False,
                        engine=make_engine("ray"))
    assert (summary.done, summary.failed, summary.failed_by_reason) == (3, 2, {"timeout": 1, "crashed": 1})
    rows = {r["video_id"]: r for r in read_tables([out]).to_pylist() if r["status"] == "failed"}
    assert (rows["hang1"]["reason"], rows["crash4"]["reason"]) == ("timeout", "crashed")
    assert "SIGSEGV" in rows["crash4"]["error"]
    def unkeyed(rows):  # a failed source moves the keys of the clips after it in its shard
        return [{k: v for k, v in r.items() if k != "clip_key"} for r in rows if r["status"] != "failed"]
    others = [r for r in outputs(local)["rows"] if r["video_id"] not in ("v1", "v4")]
    assert unkeyed(outputs(out)["rows"]) == unkeyed(others)
    assert not multiprocessing.active_children()


def test_a_model_actor_builds_its_model_once(cluster, local, tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    make = functools.partial(ray_workers.CountedModel, str(built))
    summary = run_table_stage(local, tmp_path / "ray", make, {"stage": "count"}, progress=False,
                              engine=make_engine("ray", gpus_per_worker=0, actors=2))
    assert summary.done == 3 and summary.counts == {"clips": 11, "failed": 0}
    assert len(list(built.iterdir())) == 2  # two actors, three shards: one model each
    run_table_stage(local, tmp_path / "local", make, {"stage": "count"}, progress=False)
    assert len(list(built.iterdir())) == 3  # the local engine builds one
    for s in range(3):
        name = f"{s:05d}.parquet"
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name))
    assert "3 shards done" in str(summary) and "11 clips" in str(summary)


class CountedBuilds:
    """An engine whose jobs' runners leave a file in ``marks`` each time one is built (a model loaded)."""

    def __init__(self, engine, marks: Path) -> None:
        self.engine, self.marks = engine, str(marks)

    def run(self, job, advance):
        counted = functools.partial(ray_workers.counted, self.marks, job.make_runner)
        return self.engine.run(dataclasses.replace(job, make_runner=counted), advance)


def embedding_outputs(out: Path) -> dict:
    """Every embedding shard's table, the stats less timings, config.json."""
    return {"tables": {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))},
            "stats": [{k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
                      for p in sorted(out.glob("*.stats.json"))],
            "config": json.loads((out / "config.json").read_text())}


def test_embed_clips_on_ray_actors_gives_the_local_shards_and_loads_one_model_per_actor(
        cluster, tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ckpt = str(export_safetensors(create_model("tiny"), tmp_path / "tiny.safetensors"))
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(5):  # three shards of two (the last of one); captions beside some
        tv.write_video(videos / f"clip{i}.mp4", tv.pan_frames(12, 48, 32, 1 + i, seed=i), 8)
        if i % 2 == 0:
            (videos / f"clip{i}.txt").write_text(f"a panning shot number {i}")
    local, built = tmp_path / "local", tmp_path / "built"
    built.mkdir()
    cfg = EmbedConfig(checkpoint=ckpt, clips_per_shard=2, workers=0)
    summary = run_embedding([str(videos)], local, cfg, progress=False, engine=CountedBuilds(LocalEngine(), built))
    assert (summary["done"], summary["clips"], summary["failed"]) == (3, 5, 0)
    assert len(list(built.iterdir())) == 1  # the local engine loads one model for all shards
    real = embed_clips.engine_from_args
    monkeypatch.setattr(embed_clips, "engine_from_args", lambda args: CountedBuilds(real(args), built))
    monkeypatch.setattr("sys.argv", ["embed-clips", "--input", str(videos), "--out", str(tmp_path / "ray"),
                                     "--checkpoint", ckpt, "--clips-per-shard", "2", "--workers", "0",
                                     "--no-progress", "--engine", "ray", "--gpus-per-worker", "0", "--actors", "2"])
    embed_clips.main()
    assert capsys.readouterr().out.strip() == (f"3 shards done, 0 done before (of 3); 5 clips embedded, 0 failed; "
                                               f"output in {tmp_path / 'ray'}")  # the summary line, as the local run's
    assert len(list(built.iterdir())) == 3  # two actors, three shards: one model each
    ray_out, local_out = embedding_outputs(tmp_path / "ray"), embedding_outputs(local)
    assert ray_out == local_out and len(ray_out["tables"]) == 3
    assert not list((tmp_path / "ray").glob(".*tmp*"))


def test_semdedup_clusters_as_ray_tasks_give_the_local_flags(cluster, tmp_path, monkeypatch, capsys):
    """dedup-clips --method semdedup --engine ray: each cluster is a Ray task; the flags are the local search's."""
    vectors, planted = clustered_embeddings(3000, 32, concepts=30, planted=30, low=0.9, seed=2)
    root = write_embedding_shards(tmp_path / "emb", vectors.numpy(), 1000)
    pairs, _ = semantic_pairs([root], 0.9, SemDedupConfig(clusters=12), tmp_path / "local.semdedup")
    assert {tuple(p) for p in planted.tolist()} <= set(map(tuple, pairs.tolist()))
    find_duplicates_and_leaks([root], tmp_path / "local.parquet", DedupConfig(threshold=0.9), pairs)
    argv = ["dedup-clips", "--input", str(root), "--out", str(tmp_path / "ray.parquet"), "--threshold", "0.9",
            "--method", "semdedup", "--clusters", "12", "--engine", "ray"]
    monkeypatch.setattr("sys.argv", argv)
    dedup_clips.main()
    assert "semdedup: 3000 clips in 12 clusters" in capsys.readouterr().out
    assert len(list((tmp_path / "ray.parquet.semdedup" / "pairs").glob("*.npy"))) == 12  # every cluster searched
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    monkeypatch.setattr("sys.argv", [a for a in argv if a not in ("--method", "semdedup")])
    with pytest.raises(SystemExit, match="--engine ray runs the clusters of --method semdedup"):
        dedup_clips.main()
