"""Near-duplicate search at scale (SemDeDup, Abbas et al. 2023): k-means on the embeddings, then the exact
search inside each cluster.

The exact search (:func:`viclip.curation.dedup.similar_pairs`) costs ``N^2 D / 2`` multiply-adds: 1.9 h for 1M
clips on this machine's CPU, years for 234M. Near duplicates (cosine >= 0.9 or so) are close enough to fall in
the same k-means cluster almost always, so the search is done per cluster:

1. **Centroids**: faiss's spherical k-means, trained on a sample (``sample_per_cluster`` rows per centroid,
   drawn uniformly from every shard).
2. **Assignment**, streamed shard by shard: each row's ``spill`` nearest centroids. The nearest is its
   cluster (it is a *member* there); the next ``spill - 1`` make it a *query* of those clusters too, so a
   pair split by a cluster boundary is still compared, unless the row lies too deep inside its own cluster
   to have a near duplicate in the other (:func:`boundary_queries`, an exact bound). Each shard's rows are
   written sorted by cluster.
3. **Search per cluster**: members against members (the upper triangle) and the cluster's queries against
   its members, exactly, with the same blocked products as the exact method (on ``device``). A cluster's
   pairs are one file, written atomically; clusters are spread over local processes (``workers``) and over
   torchrun ranks; a rerun skips done shards and clusters.

The pairs (row numbers in the order :func:`viclip.curation.dedup.load_embeddings` reads them) feed the same
groups, ``keep_by`` rules and flags table as the exact method. Cost: assignment ``N k D``, search about
``(N^2 / k) (spill - 1/2) D`` for balanced clusters, so ``clusters=0`` picks ``k = sqrt(N (spill - 1/2))``,
which balances the two. Recall and speed against the exact search: ``bench/similarity_search.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.dedup import _blocks, embedding_files, shard_embeddings, similar_pairs
from viclip.curation.engine import Advance, Engine, ShardJob, ShardRunner
from viclip.curation.kmeans import FaissProcess
from viclip.curation.stage_configs import SemDedupConfig
from viclip.curation.stage_dir import StageDir, record_or_check_settings
from viclip.distributed import barrier, world
from viclip.errors import DataError


def shard_vectors(path: str | os.PathLike) -> np.ndarray:
    """A shard's normalised video embeddings ``[n, D]`` float32, rows as :func:`shard_embeddings` reads them."""
    return next(shard_embeddings([path])).vectors.numpy()


def auto_clusters(num: int, spill: int) -> int:
    return max(1, round(math.sqrt(num * (spill - 0.5))))


def train_centroids(files: Sequence[Path], rows: Sequence[int], k: int, cfg: SemDedupConfig, faiss: FaissProcess,
                    read: Callable[[Path], np.ndarray] = shard_vectors) -> np.ndarray:
    """Spherical k-means (faiss) on ``k * sample_per_cluster`` rows drawn uniformly over the shards."""
    total = sum(rows)
    rng = np.random.default_rng(cfg.seed)
    share = min(1.0, k * cfg.sample_per_cluster / max(total, 1))
    sample = []
    for f, n in zip(files, rows):
        if n:
            vectors = read(f)
            sample.append(vectors[rng.random(len(vectors)) < share])
    sample = np.ascontiguousarray(np.concatenate(sample))
    if len(sample) < k:
        raise DataError(f"--clusters {k}: only {len(sample)} embeddings to train k-means on; give fewer clusters")
    return faiss.kmeans(sample, k, cfg.kmeans_iterations, cfg.seed, cfg.sample_per_cluster)


def _save(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def boundary_queries(centroids: np.ndarray, scores: np.ndarray, near: np.ndarray, threshold: float) -> np.ndarray:
    """Which of a row's next clusters (``near[:, 1:]``) can hold a row within ``threshold`` cosine of it.

    For unit ``x`` in cluster A and ``y`` in B (each nearer its own centroid), ``<y, c_B - c_A> >= 0``, so
    ``<x, c_A> - <x, c_B> <= |x - y| |c_A - c_B|`` with ``|x - y| = sqrt(2 - 2 cos)``: a row further inside
    its cluster than that has no near duplicate in B and is not searched there (an exact rule, not a guess).
    """
    radius = math.sqrt(max(0.0, 2.0 - 2.0 * threshold))
    gap = scores[:, :1] - scores[:, 1:]
    apart = np.linalg.norm(centroids[near[:, :1]] - centroids[near[:, 1:]], axis=-1)
    return gap <= radius * apart + 1e-5  # the margin covers float32 rounding of the scores


def assign_shard(vectors: np.ndarray, centroids: np.ndarray, spill: int, threshold: float, stem: Path,
                 faiss: FaissProcess) -> None:
    """Write a shard's rows sorted by cluster: members (nearest centroid) and queries (those of the next
    ``spill - 1`` that :func:`boundary_queries` keeps): ``{stem}.members.npy``/``.queries.npy`` (vectors,
    memory-mapped by the search) and ``{stem}.index.npz`` (local row numbers and per-cluster offsets of each)."""
    scores, near = faiss.nearest(vectors, centroids, min(spill, len(centroids)))
    useful = boundary_queries(centroids, scores, near, threshold)
    k, arrays = len(centroids), {}
    query_rows = np.nonzero(useful)[0]
    for kind, cluster, rows in (("members", near[:, 0], np.arange(len(vectors))),
                                ("queries", near[:, 1:][useful], query_rows)):
        order = np.argsort(cluster, kind="stable")
        with atomic_path(f"{stem}.{kind}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, vectors[rows[order]])
        arrays[f"{kind}_rows"] = rows[order]
        arrays[f"{kind}_offsets"] = np.searchsorted(cluster[order], np.arange(k + 1))
    _save(Path(f"{stem}.index.npz"), **arrays)


@torch.no_grad()
def cross_pairs(queries: torch.Tensor, index: torch.Tensor, threshold: float, block_size: int,
                device: str | torch.device) -> np.ndarray:
    """Pairs ``[P, 2]`` (query row, index row) with cosine >= ``threshold``: every query against every index row."""
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for qs, qe in _blocks(len(queries), block_size):
        q = queries[qs:qe].to(device)
        for ks, ke in _blocks(len(index), block_size):
            hit = (q @ index[ks:ke].to(device).T >= threshold).nonzero().cpu().numpy()
            pairs.append(hit + [qs, ks])
    return np.concatenate(pairs)


class ClusterSearch:
    """Searches clusters from the assignment files of a work directory (picklable: sent to worker processes)."""

    def __init__(self, work: Path, offsets: Sequence[int], threshold: float, block_size: int, device: str) -> None:
        self.work, self.offsets = work, list(offsets)
        self.threshold, self.block_size, self.device = threshold, block_size, device
        self._index: dict[int, dict[str, np.ndarray]] = {}  # shard -> its row numbers and offsets, read once

    def gather(self, kind: str, c: int) -> tuple[np.ndarray, np.ndarray]:
        """A cluster's ``kind`` rows (global row numbers) and vectors, from every shard."""
        rows, vectors = [], []
        for s, offset in enumerate(self.offsets):
            stem = self.work / "assign" / f"{s:05d}"
            if s not in self._index:
                self._index[s] = dict(np.load(f"{stem}.index.npz"))
            index = self._index[s]
            lo, hi = index[f"{kind}_offsets"][c:c + 2]
            if hi > lo:
                rows.append(index[f"{kind}_rows"][lo:hi] + offset)
                vectors.append(np.load(f"{stem}.{kind}.npy", mmap_mode="r")[lo:hi])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows), np.concatenate(vectors)

    def cluster(self, c: int, _input: None = None, _advance: Advance | None = None) -> dict:
        """Search cluster ``c`` unless done: its pairs (global rows, i < j) go to ``pairs/{c:06d}.npy``. A
        :data:`~viclip.curation.engine.ShardRunner`, so an engine (Ray) can run clusters as its shards."""
        path = self.work / "pairs" / f"{c:06d}.npy"
        if path.exists():
            return {"pairs": None}
        member_rows, members = self.gather("members", c)
        query_rows, queries = self.gather("queries", c)
        found = [np.zeros((0, 2), dtype=np.int64)]
        if len(member_rows) > 1:
            found.append(member_rows[similar_pairs(torch.from_numpy(members), self.threshold,
                                                   self.block_size, self.device)])
        if len(member_rows) and len(query_rows):
            hit = cross_pairs(torch.from_numpy(queries), torch.from_numpy(members), self.threshold,
                              self.block_size, self.device)
            found.append(np.stack([query_rows[hit[:, 0]], member_rows[hit[:, 1]]], axis=1))
        pairs = np.sort(np.concatenate(found), axis=1)
        with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as f:  # cheap to redo: no fsync
            np.save(f, pairs)
        return {"pairs": len(pairs)}

    def runner(self) -> ShardRunner:
        """The job's ``make_runner``: this search (it pickles: a Ray task gets a copy)."""
        return self.cluster

    def __call__(self, clusters: Sequence[int]) -> int:
        """Search ``clusters`` (a worker process's share)."""
        for c in clusters:
            self.cluster(c)
        return len(clusters)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def semantic_pairs(inputs: Sequence[str | os.PathLike], threshold: float, cfg: SemDedupConfig,
                   work_dir: str | os.PathLike, block_size: int = 8192, device: str = "cpu",
                   engine: Engine | None = None) -> tuple[np.ndarray, dict]:
    """Near-duplicate pairs (rows in :func:`load_embeddings`' order, i < j, unique) and a report of the run.

    Under torchrun every rank calls it: rank r does the shards and clusters ``i % world == r``; all return
    the pairs. The search, most of the work, runs on ``cfg.workers`` local processes, or with an
    ``engine`` (Ray) each cluster is one of its shards. Each phase resumes from the files of ``work_dir``."""
    rank, size = world()
    work, seconds = Path(work_dir), {"read": 0.0}

    def read(path: Path) -> np.ndarray:  # timed apart: reading scales with the rows, the rest also with k
        start = time.perf_counter()
        vectors = shard_vectors(path)
        seconds["read"] += time.perf_counter() - start
        return vectors

    files = embedding_files(inputs)
    started = time.perf_counter()
    for sub in ("assign", "pairs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n".join(str(f.resolve()) for f in files).encode()).hexdigest()
    stored = [pq.read_metadata(f).num_rows for f in files]  # rows before filtering: the sampling's weights
    k = cfg.clusters or auto_clusters(sum(stored), cfg.spill)
    if rank == 0:
        record = {"inputs_sha256": digest, "threshold": threshold, "clusters": k, "spill": cfg.spill,
                  "sample_per_cluster": cfg.sample_per_cluster, "seed": cfg.seed,
                  "kmeans_iterations": cfg.kmeans_iterations}
        record_or_check_settings(StageDir(work), record, new_dir="a new --work-dir")
    centroids_path = work / "centroids.npy"
    with FaissProcess() as faiss:
        if rank == 0 and not centroids_path.exists():
            with atomic_path(centroids_path) as tmp, open(tmp, "wb") as f:
                np.save(f, train_centroids(files, stored, k, cfg, faiss, read))
        barrier()
        centroids = np.load(centroids_path)
        seconds["kmeans"], seconds["kmeans_read"] = time.perf_counter() - started, seconds["read"]
        for s in range(rank, len(files), size):
            done = work / "assign" / f"{s:05d}.json"
            if not done.exists():
                vectors = read(files[s])
                assign_shard(vectors, centroids, cfg.spill, threshold, work / "assign" / f"{s:05d}", faiss)
                atomic_write(done, json.dumps({"file": str(files[s]), "rows": len(vectors)}))
    barrier()
    counts = [json.loads((work / "assign" / f"{s:05d}.json").read_text())["rows"] for s in range(len(files))]
    seconds["assign"] = time.perf_counter() - started - seconds["kmeans"]
    seconds["assign_read"] = seconds.pop("read") - seconds["kmeans_read"]
    search = ClusterSearch(work, np.cumsum([0, *counts[:-1]]).tolist(), threshold, block_size, device)
    sizes, queries = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)  # per cluster, over every shard
    for s in range(len(files)):
        with np.load(work / "assign" / f"{s:05d}.index.npz") as index:  # each shard's index read once
            sizes += np.diff(index["members_offsets"])
            queries += np.diff(index["queries_offsets"])
    mine = [int(c) for c in np.argsort(-sizes, kind="stable")[rank::size]]  # largest first: balanced workers
    if engine is not None:
        todo = {c: None for c in mine if not (work / "pairs" / f"{c:06d}.npy").exists()}
        for _ in engine.run(ShardJob(search.runner, todo, unit="cluster"), lambda shard, n: None):
            pass
    elif cfg.workers == 1:
        search(mine)
    else:
        threads = max(1, torch.get_num_threads() // cfg.workers)
        with ProcessPoolExecutor(cfg.workers, get_context("spawn"), _worker_init, (threads,)) as pool:
            list(pool.map(search, [mine[w::cfg.workers] for w in range(cfg.workers)]))
    barrier()
    pairs = np.concatenate([np.zeros((0, 2), dtype=np.int64)] +
                           [np.load(work / "pairs" / f"{c:06d}.npy") for c in range(k)])
    pairs = np.unique(pairs, axis=0)
    seconds["search"] = time.perf_counter() - started - seconds["kmeans"] - seconds["assign"]
    report = {"method": "semdedup", **asdict(cfg), "clusters": k, "rows": int(sum(counts)),
              "largest_cluster": int(sizes.max()), "mean_cluster": round(float(sizes.mean()), 1),
              # vector pairs compared: the search's work (the exact method compares rows * (rows - 1) / 2)
              "compared": int((sizes * (sizes - 1) // 2 + queries * sizes).sum()),
              "pairs": len(pairs), "seconds": {phase: round(s, 3) for phase, s in seconds.items()}}
    return pairs, report
