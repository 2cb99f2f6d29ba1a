"""Near-duplicate clips and evaluation leakage, from the embedding shards of ``embed_clips``.

- **Near duplicates**: clips whose normalised video embeddings have a cosine >= ``threshold``, found
  exactly by blocked matrix products (a block of queries against a block of the index at a time, so
  memory is ``block_size**2`` floats whatever the corpus size; on a GPU with ``device``). faiss's exact
  index (``IndexFlatIP.range_search``) computes the same products: ``bench/similarity_search.py`` ran
  both side by side at 1M x 768 and measured the same clips/s (13.1 vs 13.3), so the exact search uses none
  (:mod:`viclip.curation.semdedup` uses faiss's k-means to search millions of clips cluster by cluster).
  Pairs are joined into groups (connected components: A~B and B~C put A, B, C in one group), and one
  clip per group is kept: the highest ``keep_by`` column (``aesthetic`` or ``similarity``, a
  missing value counting lowest) or the ``first`` in input order.
- **Evaluation leakage**: a clip whose source id (the YouTube id of its ``video_id``) appears in an
  evaluation annotation file (Kinetics CSVs or JSON lists, MSVD, ActivityNet: names that carry a
  YouTube id, read as the eval tasks read them), or whose embedding is within ``eval_threshold`` cosine
  of an evaluation video's (the eval videos embedded by ``embed_clips``: this also catches sets whose
  names carry no YouTube id, such as MSR-VTT's ``videoNNNN`` and DiDeMo's Flickr names).

The result is a flags table, one row per clip: ``clip_id``, ``duplicate_group`` and ``duplicate_of``
(the kept clip; null for the kept one), ``eval_source`` (the annotation file listing its source),
``eval_video`` and ``eval_similarity`` (the nearest evaluation video within the threshold) and
``exclude``; ``build_subset --exclude FLAGS`` leaves the excluded clips out of any subset.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from viclip.atomic import atomic_write
from viclip.curation.stage_configs import KEEP_BY, DedupConfig
from viclip.curation.table import table_files, write_table
from viclip.data.annotations import load_kinetics, load_video_text_annotations, youtube_id
from viclip.errors import DataError

RANKING = KEEP_BY[1:]  # the score columns --keep-by may rank clips by
FLAGS_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("duplicate_group", pa.int64()), ("duplicate_of", pa.string()),
    ("eval_source", pa.string()), ("eval_video", pa.string()), ("eval_similarity", pa.float32()),
    ("exclude", pa.bool_()),
])


@dataclass
class Embeddings:
    """The rows of embedding shards with a video embedding: ids (arrow strings, not Python objects: the
    flags step keeps every row's), score columns, and normalised vectors [N, D]."""

    clip_id: pa.Array
    video_id: pa.Array  # null where the shard has no video_id column
    columns: dict[str, np.ndarray]  # aesthetic, similarity as float64 with NaN for missing
    vectors: torch.Tensor
    non_finite: int = 0  # rows left out because their embedding holds NaN or inf (counted, never searched)


def embedding_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Parquet files named directly, or the finished shards of embed_clips output directories."""
    return table_files(paths, "embedding shard", " (give embed_clips' output directory)")


def shard_embeddings(paths: Sequence[str | os.PathLike]) -> Iterator[Embeddings]:
    """Each embedding shard's rows in turn, one shard's vectors in memory at a time: rows without a video
    embedding (unreadable clips) are left out, and so are rows whose embedding is not finite (counted in
    ``non_finite``). Shards of different widths are an error naming both."""
    width = None
    for f in embedding_files(paths):
        names = pq.read_schema(f).names
        missing = [c for c in ("clip_id", "video_embedding") if c not in names]
        if missing:
            raise DataError(f"{f}: not an embedding shard (no columns {missing}); make it with embed_clips")
        # the text embeddings are not needed: reading them would double the memory of a large corpus
        table = pq.read_table(f, columns=[c for c in ("clip_id", "video_id", *RANKING, "video_embedding")
                                          if c in names])
        table = table.filter(pc.is_valid(table.column("video_embedding")))
        for dim in pc.unique(pc.list_value_length(table.column("video_embedding"))).to_pylist():
            if width is not None and dim != width[0]:
                raise DataError(f"{f}: video embeddings of width {dim}, but {width[1]} has width {width[0]}: "
                                "give shards of one model")
            width = (dim, f)
        flat = table.column("video_embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = torch.from_numpy(flat.reshape(len(table), width[0] if width else 0).copy())
        finite = torch.isfinite(vectors).all(dim=1)
        table, vectors = table.filter(pa.array(finite.numpy())), vectors[finite]
        columns = {c: pc.cast(table.column(c), pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
                   for c in RANKING if c in table.column_names}
        video_id = table.column("video_id") if "video_id" in names else pa.chunked_array([pa.nulls(len(table))])
        clip_id, video_id = (pc.cast(c, pa.string()).combine_chunks() for c in (table.column("clip_id"), video_id))
        yield Embeddings(clip_id, video_id, columns,
                         torch.nn.functional.normalize(vectors.float(), dim=-1), int((~finite).sum()))


def load_embeddings(paths: Sequence[str | os.PathLike]) -> Embeddings:
    """Every shard's rows (:func:`shard_embeddings`) at once, vectors ``[N, D]``: a score column some shards
    lack is NaN in their rows."""
    parts = list(shard_embeddings(paths))
    dim = max((p.vectors.shape[1] for p in parts), default=0)
    names = sorted({c for p in parts for c in p.columns})
    return Embeddings(pa.concat_arrays([pa.array([], pa.string())] + [p.clip_id for p in parts]),
                      pa.concat_arrays([pa.array([], pa.string())] + [p.video_id for p in parts]),
                      {c: np.concatenate([np.zeros(0)] + [p.columns.get(c, np.full(len(p.clip_id), math.nan))
                                                          for p in parts]) for c in names},
                      torch.cat([torch.zeros(0, dim)] + [p.vectors.reshape(len(p.clip_id), dim) for p in parts]),
                      sum(p.non_finite for p in parts))


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.no_grad()
def similar_pairs(vectors: torch.Tensor, threshold: float, block_size: int = 8192,
                  device: str | torch.device = "cpu", rows: tuple[int, int] | None = None) -> np.ndarray:
    """Pairs ``[P, 2]`` (i < j) of rows of normalised ``vectors`` with cosine >= ``threshold``, exactly.

    Only the upper triangle is computed (``N^2 / 2`` dot products). ``rows=(start, end)`` searches only the
    pairs whose first row is in that range (a slice of the work, for splitting it or measuring it).
    """
    n, pairs = len(vectors), []
    start, end = rows or (0, n)
    for qs, qe in _blocks(end - start, block_size):
        qs, qe = qs + start, qe + start
        q = vectors[qs:qe].to(device)
        for ks, ke in _blocks(n - qs, block_size):
            ks, ke = ks + qs, ke + qs
            hit = (q @ vectors[ks:ke].to(device).T >= threshold).nonzero().cpu().numpy()
            hit = hit + [qs, ks]
            pairs.append(hit[hit[:, 0] < hit[:, 1]])
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


@torch.no_grad()
def nearest(queries: torch.Tensor, index: torch.Tensor, block_size: int = 8192,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For each normalised query row, the best cosine over ``index`` rows and its position (exact)."""
    best = torch.full((len(queries),), -math.inf)
    where = torch.full((len(queries),), -1, dtype=torch.long)
    for qs, qe in _blocks(len(queries), block_size):
        q = queries[qs:qe].to(device)
        for ks, ke in _blocks(len(index), block_size):
            value, pos = (q @ index[ks:ke].to(device).T).max(dim=1)
            value, pos = value.cpu(), pos.cpu() + ks
            better = value > best[qs:qe]
            best[qs:qe] = torch.where(better, value, best[qs:qe])
            where[qs:qe] = torch.where(better, pos, where[qs:qe])
    return best.numpy(), where.numpy()


def duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: a group id per row (the smallest row of its group)."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    while True:  # every parent is a smaller row of the group, so jumping ends at each group's smallest row
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent.astype(np.int64)
        parent = jumped


def kept_per_group(groups: np.ndarray, score: np.ndarray | None) -> np.ndarray:
    """The row kept for each row's group: the highest ``score`` (NaN lowest; ties: first), else the first."""
    if score is None:
        return groups  # group ids are their smallest (first) row
    order = np.lexsort((np.arange(len(groups)), -np.nan_to_num(score, nan=-np.inf), groups))
    first = np.ones(len(order), dtype=bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keeper = np.empty(len(groups), dtype=np.int64)  # indexed by group id (a row number)
    keeper[groups[order][first]] = order[first]
    return keeper[groups]


def eval_source_ids(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, str], dict[str, int]]:
    """``{YouTube id: annotation file}`` over evaluation annotation files, and per file how many entries
    carry no YouTube id (those sets are covered by the embedding check only)."""
    ids: dict[str, str] = {}
    without: dict[str, int] = {}
    for path in map(str, paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"evaluation annotation file not found: {path}")
        records = (load_kinetics(path, "", missing="keep")[0] if path.endswith(".csv")
                   else load_video_text_annotations(path, "", missing="keep"))
        found = [youtube_id(r.video) for r in records]
        without[path] = sum(f is None for f in found)
        for f in found:
            if f is not None:
                ids.setdefault(f, path)
    return ids, without


@dataclass
class DedupReport:
    config: dict
    clips: int = 0
    non_finite: int = 0             # clips left out: their embedding holds NaN or inf (a failed embedding)
    duplicate_pairs: int = 0
    duplicate_groups: int = 0       # groups of two or more clips
    duplicates_removed: int = 0     # clips flagged as another clip's duplicate
    eval_source_overlap: int = 0    # clips whose source id is listed by an evaluation file
    eval_near: int = 0              # clips within eval_threshold of an evaluation video
    excluded: int = 0
    eval_entries_without_source_id: dict | None = None
    seconds: dict | None = None


def _leaks(part: Embeddings, ids: dict[str, str], ev: Embeddings | None,
           cfg: DedupConfig) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """A shard's evaluation flags: the annotation file listing each clip's source id, and the nearest
    evaluation video within ``eval_threshold`` with its cosine (NaN where none)."""
    rows = len(part.clip_id)
    source = pa.array([ids.get(youtube_id(v) or v) if v else None for v in part.video_id.to_pylist()], pa.string()) \
        if ids else pa.nulls(rows, pa.string())
    near: list[str | None] = [None] * rows
    sim = np.full(rows, np.nan, dtype=np.float32)
    if ev is not None and rows and len(ev.clip_id):
        if ev.vectors.shape[1] != part.vectors.shape[1]:
            raise DataError(f"--eval-embeddings {list(cfg.eval_embeddings)}: width {ev.vectors.shape[1]}, but "
                            f"the clips' embeddings have width {part.vectors.shape[1]}: embed both with one model")
        best, where = nearest(part.vectors, ev.vectors, cfg.block_size, cfg.device)
        for i in np.flatnonzero(best >= cfg.eval_threshold):
            near[i], sim[i] = ev.clip_id[int(where[i])].as_py(), best[i]
    return source, pa.array(near, pa.string()), sim


def find_duplicates_and_leaks(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: DedupConfig,
                              pairs: np.ndarray | None = None) -> DedupReport:
    """Write the flags table ``out`` (parquet) and its report ``{out}.json``; returns the report.

    ``pairs`` are near-duplicate pairs found by another search (:mod:`viclip.curation.semdedup`): then
    only one shard's vectors are in memory at a time (the ids and scores of every row are); by default
    the exact search finds them, holding every vector."""
    started = time.perf_counter()
    files = embedding_files(inputs)
    if cfg.keep_by != "first" and not any(cfg.keep_by in pq.read_schema(f).names for f in files):
        raise DataError(f"--keep-by {cfg.keep_by}: the embedding shards have no {cfg.keep_by!r} column")
    ids, without = eval_source_ids(cfg.eval_annotations)
    ev = load_embeddings(cfg.eval_embeddings) if cfg.eval_embeddings else None
    if pairs is None:  # the exact search holds every vector at once
        parts: Iterable[Embeddings] = [load_embeddings(files)]
        pairs = similar_pairs(parts[0].vectors, cfg.threshold, cfg.block_size, cfg.device)
    else:  # pairs found by another search: one shard's vectors at a time (the eval search needs no more)
        parts = shard_embeddings(files)
    searched = time.perf_counter()
    clip_id, scores, eval_source, eval_video, eval_sim, non_finite = [], [], [], [], [], 0
    for part in parts:
        clip_id.append(part.clip_id)
        scores.append(part.columns.get(cfg.keep_by, np.full(len(part.clip_id), math.nan)))
        for found, column in zip(_leaks(part, ids, ev, cfg), (eval_source, eval_video, eval_sim)):
            column.append(found)
        non_finite += part.non_finite
    clip_id, eval_source, eval_video = (pa.chunked_array(c, pa.string()) for c in (clip_id, eval_source, eval_video))
    n = len(clip_id)
    if len(pairs) and pairs.max() >= n:
        raise ValueError(f"pairs name row {pairs.max()}, but the embedding shards hold {n} rows")
    eval_sim = np.concatenate([np.zeros(0, dtype=np.float32), *eval_sim])
    groups = duplicate_groups(n, pairs)
    keeper = kept_per_group(groups, np.concatenate([np.zeros(0), *scores]) if cfg.keep_by != "first" else None)
    sizes = np.bincount(groups, minlength=n)
    in_group = sizes[groups] > 1
    duplicate = keeper != np.arange(n)
    listed = pc.is_valid(eval_source).to_numpy()
    exclude = duplicate | listed | ~np.isnan(eval_sim)
    table = pa.table({
        "clip_id": clip_id,
        "duplicate_group": pa.array(np.where(in_group, groups, 0), mask=~in_group),
        "duplicate_of": pc.if_else(pa.array(duplicate), pc.take(clip_id, pa.array(keeper)),
                                   pa.scalar(None, pa.string())),
        "eval_source": eval_source, "eval_video": eval_video,
        "eval_similarity": pa.array(eval_sim, mask=np.isnan(eval_sim)), "exclude": exclude,
    }, schema=FLAGS_SCHEMA)
    out = Path(out)
    write_table(table, out)
    report = DedupReport(config=asdict(cfg), clips=n, non_finite=non_finite, duplicate_pairs=len(pairs),
                         duplicate_groups=int((sizes > 1).sum()), duplicates_removed=int(duplicate.sum()),
                         eval_source_overlap=int(listed.sum()),
                         eval_near=int((~np.isnan(eval_sim)).sum()), excluded=int(exclude.sum()),
                         eval_entries_without_source_id=without,
                         seconds={"duplicate_search": round(searched - started, 3),
                                  "total": round(time.perf_counter() - started, 3)})
    atomic_write(out.with_name(out.name + ".json"), json.dumps(asdict(report), indent=1))
    return report


def excluded_clip_ids(path: str | os.PathLike) -> pa.Array:
    """The ``clip_id``s a flags table marks ``exclude`` (for ``build_subset``'s ``exclude`` option)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flags table not found: {path} (make it with dedup_clips)")
    table = pq.read_table(path)
    missing = [c for c in ("clip_id", "exclude") if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: a flags table needs the columns {missing} (make it with dedup_clips)")
    return table.filter(pc.fill_null(table.column("exclude"), False)).column("clip_id").combine_chunks()
