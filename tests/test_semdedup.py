"""Semantic dedup (k-means clusters searched exactly): recall of planted pairs, the exact method's flags table,
resume per shard and per cluster, and the command's --method switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from viclip.commands.dedup_clips import main as dedup_main
from viclip.curation import dedup, semdedup
from viclip.curation.dedup import find_duplicates_and_leaks, load_embeddings, shard_embeddings, similar_pairs
from viclip.curation.kmeans import FaissProcess
from viclip.curation.semdedup import ClusterSearch, semantic_pairs
from viclip.curation.stage_configs import DedupConfig, SemDedupConfig
from viclip.errors import ConfigError, OutputError
from viclip.testing.embeddings import clustered_embeddings, write_embedding_shards

DIM, THRESHOLD = 64, 0.9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4000 clustered embeddings in 4 shards, 60 planted pairs at cosines spread over [0.9, 1]."""
    vectors, planted = clustered_embeddings(4000, DIM, concepts=40, planted=60, low=THRESHOLD, seed=1)
    root = write_embedding_shards(tmp_path_factory.mktemp("sem") / "emb", vectors.numpy(), 1000,
                                  aesthetic=np.random.default_rng(0).uniform(3, 7, 4000).astype(np.float32))
    return {"root": root, "vectors": vectors, "planted": {tuple(p) for p in planted.tolist()}}


def test_semdedup_finds_every_planted_pair_and_only_true_pairs(corpus, tmp_path):
    pairs, report = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16), tmp_path / "work",
                                   block_size=300)
    found = set(map(tuple, pairs.tolist()))
    assert corpus["planted"] <= found
    exact = set(map(tuple, similar_pairs(corpus["vectors"], THRESHOLD).tolist()))
    assert found <= exact  # never a pair below the threshold
    assert report["clusters"] == 16 and report["rows"] == 4000


def test_flags_table_equals_the_exact_methods(corpus, tmp_path, monkeypatch):
    """Also with evaluation embeddings; given the pairs, the flags step reads the clips' vectors a shard at a
    time (234M x 768 float32 would be 720 GB at once) and only the small evaluation set whole."""
    ev = write_embedding_shards(tmp_path / "eval", corpus["vectors"].numpy()[[5, 17, 2500]], 1000)
    cfg = DedupConfig(threshold=THRESHOLD, keep_by="aesthetic", block_size=512, eval_embeddings=(str(ev),))
    find_duplicates_and_leaks([corpus["root"]], tmp_path / "exact.parquet", cfg)
    pairs, _ = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16), tmp_path / "work")
    loaded, shards = [], []
    monkeypatch.setattr(dedup, "load_embeddings", lambda paths: loaded.append(paths) or load_embeddings(paths))
    monkeypatch.setattr(dedup, "shard_embeddings",
                        lambda paths: (shards.append(len(part.clip_id)) or part for part in shard_embeddings(paths)))
    find_duplicates_and_leaks([corpus["root"]], tmp_path / "sem.parquet", cfg, pairs)
    assert loaded == [(str(ev),)]  # only the eval set is loaded whole (its one shard of 3 rows)
    assert shards == [3] + [1000] * 4  # then the clips, a shard at a time
    exact, sem = pq.read_table(tmp_path / "exact.parquet"), pq.read_table(tmp_path / "sem.parquet")
    assert exact.equals(sem)
    assert sum(exact.column("duplicate_of").is_valid().to_pylist()) >= len(corpus["planted"])
    near = exact.column("eval_video").is_valid().to_pylist()
    assert near[5] and near[17] and near[2500]  # the evaluation set's three copies, by row


def test_spill_is_what_finds_pairs_split_by_a_cluster_boundary(corpus, tmp_path):
    """400 clusters of 10 rows put some planted pairs on either side of a boundary: spill 1 loses exactly
    those, spill 2 finds them."""
    cfg = SemDedupConfig(clusters=400, spill=1, sample_per_cluster=39)
    one, _ = semantic_pairs([corpus["root"]], THRESHOLD, cfg, tmp_path / "a")
    vectors = corpus["vectors"].numpy()
    cluster = faiss_nearest(np.load(tmp_path / "a" / "centroids.npy"), vectors)
    split = {(i, j) for i, j in corpus["planted"] if cluster[i] != cluster[j]}
    assert split and corpus["planted"] - set(map(tuple, one.tolist())) == split
    two, _ = semantic_pairs([corpus["root"]], THRESHOLD, replace(cfg, spill=2), tmp_path / "b")
    assert corpus["planted"] <= set(map(tuple, two.tolist()))


def faiss_nearest(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    with FaissProcess() as faiss:  # not in this process: see viclip.curation.kmeans
        return faiss.nearest(vectors, centroids, 1)[1][:, 0]


def test_a_killed_run_resumes_per_shard_and_per_cluster(corpus, tmp_path, monkeypatch):
    cfg, work = SemDedupConfig(clusters=16), tmp_path / "work"
    calls: list[int] = []
    real = ClusterSearch.gather

    def dies_after_five_clusters(self, kind, c):
        if kind == "members":
            calls.append(c)
            if len(calls) > 5:
                raise KeyboardInterrupt("killed")
        return real(self, kind, c)

    monkeypatch.setattr(ClusterSearch, "gather", dies_after_five_clusters)
    with pytest.raises(KeyboardInterrupt):
        semantic_pairs([corpus["root"]], THRESHOLD, cfg, work)
    done = sorted(work.glob("pairs/*.npy"))
    assert len(done) == 5 and len(list(work.glob("assign/*.json"))) == 4
    assigned = {p: p.stat().st_mtime_ns for p in work.glob("assign/*")}
    searched: list[int] = []

    def counted(self, kind, c):
        if kind == "members":
            searched.append(c)
        return real(self, kind, c)

    monkeypatch.setattr(ClusterSearch, "gather", counted)
    monkeypatch.setattr(semdedup, "train_centroids", lambda *a: pytest.fail("centroids retrained"))
    pairs, _ = semantic_pairs([corpus["root"]], THRESHOLD, cfg, work)
    assert {p: p.stat().st_mtime_ns for p in work.glob("assign/*")} == assigned  # no shard reassigned
    assert sorted(searched) == sorted(set(range(16)) - set(calls[:5]))  # only the clusters not done
    assert corpus["planted"] <= set(map(tuple, pairs.tolist()))
    with pytest.raises(OutputError, match="different spill"):
        semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16, spill=3), work)


def test_worker_processes_give_the_same_pairs(corpus, tmp_path):
    one, _ = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16), tmp_path / "a")
    two, _ = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16, workers=2), tmp_path / "b")
    assert np.array_equal(one, two)


def test_command_method_semdedup_and_bad_options(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "flags.parquet"
    monkeypatch.setattr(sys, "argv", ["dedup_clips.py", "--input", str(corpus["root"]), "--out", str(out),
                                      "--method", "semdedup", "--threshold", str(THRESHOLD), "--clusters", "16"])
    dedup_main()
    assert json.loads((tmp_path / "flags.parquet.semdedup" / "config.json").read_text())["clusters"] == 16
    assert pq.read_table(out).num_rows == 4000
    with pytest.raises(ConfigError, match="--spill must be >= 1, got 0"):
        SemDedupConfig(spill=0)


def test_torchrun_ranks_split_shards_and_clusters(corpus, tmp_path):
    """Two ranks (gloo on the CPU) each assign their shards and search their clusters; rank 0 writes the flags
    table, equal to one process's."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "flags.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "tools" / "dedup_clips.py"), "--input", str(corpus["root"]), "--out", str(out),
           "--method", "semdedup", "--threshold", str(THRESHOLD), "--clusters", "16"]
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = DedupConfig(threshold=THRESHOLD)
    pairs, _ = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16), tmp_path / "one")
    find_duplicates_and_leaks([corpus["root"]], tmp_path / "one.parquet", cfg, pairs)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "one.parquet"))


def test_boundary_rule_keeps_every_pair_and_prunes_most_queries(corpus, tmp_path):
    """Spilled into every cluster, the search is exact by construction; the boundary rule keeps that while
    searching a row in fewer of the other clusters."""
    pairs, _ = semantic_pairs([corpus["root"]], THRESHOLD, SemDedupConfig(clusters=16, spill=16), tmp_path / "w")
    exact = similar_pairs(corpus["vectors"], THRESHOLD)
    assert set(map(tuple, pairs.tolist())) == set(map(tuple, exact.tolist()))
    queries = sum(len(np.load(f)["queries_rows"]) for f in (tmp_path / "w" / "assign").glob("*.index.npz"))
    assert queries < 4000 * 15  # some rows lie too deep in their cluster to be searched in all 15 others
