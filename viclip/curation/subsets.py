"""Training subsets of the clip table: DIV, FLT, Aes and random N (paper section 3.3, appendix E.1).

The selection functions are pure functions of columns (numpy arrays) and a seed and return row
positions. :func:`build_subset` applies one to parquet clip tables on disk in two streaming passes:
the first reads only the columns a rule needs (an int32 source code per row, not the strings), the
second copies the selected rows. So a 234M-row table needs a few bytes per row, never the table.

DIV reproduces the official ``div_sampling.py`` exactly: each clip is weighted by the inverse of
its source video's clip count and ``N`` positions are drawn with numpy's legacy
``RandomState(seed).choice(n, N, replace=False, p=w / w.sum())`` (the script seeds the global
state with ``np.random.seed(42)``, which is the same generator). The output keeps the input order
(rows of one tar stay together for ``make_shards``) and records the official list order in
``subset_rank``: sorting by it gives the script's output list. The pool is the rows with status
``kept``; a table without a ``status`` column (the released annotations, whose clips were all kept)
pools every row, as the official script does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.table import refuse_output_over_inputs, table_files
from viclip.errors import ConfigError, DataError
from viclip.progress import progress as progress_bar

RULES = ("div", "flt", "aes", "random")
RANK_COLUMN = "subset_rank"
BATCH_ROWS = 1 << 20


def source_codes(names: pa.Array | pa.ChunkedArray, prefix: int | None = None,
                 codes: dict[str, int] | None = None) -> np.ndarray:
    """An int32 code per row for the source video: the base name after the last ``/``, cut to ``prefix``.

    ``prefix=11`` is the official rule for InternVid file names (``{youtube_id}_{start}_{end}.mp4``);
    ``None`` keeps the whole name (a ``video_id`` column). ``codes`` maps names to codes across calls,
    so a table read batch by batch gets consistent codes; only each batch's distinct names pass
    through Python.
    """
    codes = {} if codes is None else codes
    if names.null_count:
        raise DataError("source names contain nulls (give --source-column a column set on every row)")
    encoded = pc.dictionary_encode(names)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    out = []
    for chunk in chunks:  # the string work runs on each chunk's distinct names only
        keys = pc.replace_substring_regex(chunk.dictionary, pattern=r"^.*/", replacement="")
        if prefix is not None:
            keys = pc.utf8_slice_codeunits(keys, 0, prefix)
        keys = pc.dictionary_encode(keys)
        lookup = np.array([codes.setdefault(k, len(codes)) for k in keys.dictionary.to_pylist()], dtype=np.int32)
        per_name = lookup[keys.indices.to_numpy(zero_copy_only=False)] if len(lookup) else lookup
        out.append(per_name[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


def div_sample(codes: np.ndarray, num: int, seed: int = 42) -> np.ndarray:
    """Positions of ``num`` rows drawn without replacement with probability ~ 1 / clips of their source.

    Returns them in draw order (the official output order). The weights are built as the official
    script builds them (float64 ``1 / count`` per row, divided by their sum) so the generator sees
    bit-identical probabilities.
    """
    n = len(codes)
    if not 0 <= num <= n:
        raise ConfigError(f"DIV: cannot draw --num {num} clips without replacement from a pool of {n}")
    counts = np.bincount(codes)
    weights = 1.0 / counts[codes]
    weights /= weights.sum()
    return np.random.RandomState(seed).choice(n, num, replace=False, p=weights)


def random_sample(n: int, num: int, seed: int = 42) -> np.ndarray:
    """Positions of ``num`` of ``n`` rows, uniform without replacement (the 10M/50M/200M scaling subsets)."""
    if not 0 <= num <= n:
        raise ConfigError(f"random: cannot draw --num {num} clips without replacement from a pool of {n}")
    return np.random.RandomState(seed).choice(n, num, replace=False)


def flt_mask(duration: np.ndarray, similarity: np.ndarray, min_seconds: float = 1.0,
             max_seconds: float = 120.0, top_fraction: float = 0.3) -> tuple[np.ndarray, float]:
    """FLT's filters: ``min_seconds <= duration <= max_seconds``, then similarity in the top fraction.

    The cut is the ``1 - top_fraction`` quantile (linear interpolation) of the similarities of the
    clips that passed the duration filter, so the rule is the same for any score scale (UMT, ViCLIP,
    CLIPScore x 2.5). Clips without a score (NaN) never pass. Returns the mask and the threshold.
    """
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"--top-fraction must be in (0, 1], got {top_fraction}")
    ok = (duration >= min_seconds) & (duration <= max_seconds) & ~np.isnan(similarity)
    if not ok.any():
        raise DataError("FLT: no clip with a similarity score passes the duration filter")
    threshold = float(np.quantile(similarity[ok], 1.0 - top_fraction))
    return ok & (similarity >= threshold), threshold


def aes_mask(aesthetic: np.ndarray, threshold: float = 4.0) -> np.ndarray:
    """Aes: aesthetic score >= ``threshold``; clips without a score (NaN) are dropped."""
    return aesthetic >= threshold


@dataclass(frozen=True)
class SubsetSpec:
    """One subset rule and its parameters (recorded beside the output)."""

    rule: str                            # div | flt | aes | random
    num: int | None = None               # clips to draw (div, flt, random)
    seed: int = 42
    source_column: str = "video_id"      # DIV's source video: column and prefix length (11: official file names)
    source_prefix: int | None = None
    min_seconds: float = 1.0             # FLT
    max_seconds: float = 120.0
    top_fraction: float = 0.3
    similarity_column: str = "clip_text_sim"
    aesthetic_threshold: float = 4.0     # Aes
    kept_only: bool = True               # rows with status != 'kept' are never in the pool (a table
                                         # without a status column, e.g. released annotations, pools every row)
    exclude: str | None = None           # a flags table (dedup_clips): clips it marks exclude never enter the pool

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"--rule: subset rule must be one of {', '.join(RULES)}; got {self.rule!r}")
        if self.rule in ("div", "flt", "random") and (self.num is None or self.num < 0):
            raise ConfigError(f"subset rule {self.rule!r} needs --num >= 0 (clips to draw), got {self.num}")

    def columns(self) -> list[str]:
        cols = {"div": [self.source_column], "random": [],
                "flt": ["duration", self.similarity_column, self.source_column], "aes": ["aesthetic"]}[self.rule]
        return cols


@dataclass
class SubsetReport:
    spec: dict
    inputs: list[str]
    rows: int = 0                 # rows in the input tables
    pool: int = 0                 # rows eligible (kept clips)
    selected: int = 0
    counts: dict[str, float] = field(default_factory=dict)   # rule-specific: sources, threshold, ...


def _numeric(batch: pa.RecordBatch, name: str, path: Path) -> np.ndarray:
    col = batch.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise DataError(f"{path}: column {name!r} must be numeric, got {col.type}")
    return pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _scan(files: Sequence[Path], spec: SubsetSpec,
          progress: bool = True) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """Pass 1: the pool's row positions and the rule's columns for the pool only, file by file.

    Arrays are sized once from the parquet footers and filled in place (no list of parts to
    concatenate, which would double the peak).
    """
    from viclip.curation.dedup import excluded_clip_ids  # dedup's torch only when a flags table is given

    needed = spec.columns()
    excluded = excluded_clip_ids(spec.exclude) if spec.exclude else None
    by_id = ["clip_id"] if excluded is not None and "clip_id" not in needed else []
    readers = [pq.ParquetFile(path) for path in files]
    for path, pf in zip(files, readers):
        missing = [c for c in needed + by_id if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: subset rule {spec.rule!r} needs columns {missing}")
    total = sum(pf.metadata.num_rows for pf in readers)
    positions = np.empty(total, dtype=np.int64)
    cols = {c: np.empty(total, dtype=np.int32 if c == spec.source_column else np.float64) for c in needed}
    codes: dict[str, int] = {}
    offset = filled = 0
    bar = progress_bar(total=total, unit="row", desc=f"subset {spec.rule}: pass 1/2 (scan)", enabled=progress)
    for path, pf in zip(files, readers):
        by_status = spec.kept_only and "status" in pf.schema_arrow.names
        for batch in pf.iter_batches(batch_size=BATCH_ROWS,
                                     columns=needed + by_id + (["status"] if by_status else [])):
            bar.update(batch.num_rows)
            pool = np.ones(batch.num_rows, dtype=bool)
            if by_status:
                pool = pc.equal(batch.column("status"), "kept").fill_null(False).to_numpy(zero_copy_only=False)
            if excluded is not None:
                pool &= ~pc.is_in(batch.column("clip_id"), value_set=excluded).to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(pool)
            positions[filled:filled + len(rows)] = offset + rows
            for c, out in cols.items():
                if c == spec.source_column:
                    values = source_codes(batch.column(c).filter(pa.array(pool)), spec.source_prefix, codes)
                else:
                    values = _numeric(batch, c, path)[pool]
                out[filled:filled + len(rows)] = values
            offset += batch.num_rows
            filled += len(rows)
    bar.close()
    return offset, positions[:filled], {c: v[:filled] for c, v in cols.items()}


def select(spec: SubsetSpec, pool_size: int, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
    """Pool positions chosen by ``spec`` (in the rule's order) and figures about the choice."""
    if spec.rule == "div":
        codes = cols[spec.source_column]
        return div_sample(codes, spec.num, spec.seed), {"sources": int(codes.max(initial=-1)) + 1}
    if spec.rule == "random":
        return random_sample(pool_size, spec.num, spec.seed), {}
    if spec.rule == "aes":
        return np.flatnonzero(aes_mask(cols["aesthetic"], spec.aesthetic_threshold)), {}
    duration, sim = cols["duration"], cols[spec.similarity_column]
    mask, threshold = flt_mask(duration, sim, spec.min_seconds, spec.max_seconds, spec.top_fraction)
    survivors = np.flatnonzero(mask)
    counts = {"too_short": int((duration < spec.min_seconds).sum()),
              "too_long": int((duration > spec.max_seconds).sum()),
              "no_score": int(np.isnan(sim).sum()), "similarity_threshold": threshold,
              "after_filters": len(survivors)}
    if spec.num > len(survivors):
        raise ConfigError(f"FLT: --num {spec.num} clips requested but only {len(survivors)} pass the filters")
    drawn = div_sample(cols[spec.source_column][survivors], spec.num, spec.seed)
    return survivors[drawn], counts


def _unified_schema(files: Sequence[Path]) -> pa.Schema:
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="default")
    if RANK_COLUMN in schema.names:
        raise DataError(f"input tables already have a {RANK_COLUMN!r} column: build subsets from clip tables")
    return schema.append(pa.field(RANK_COLUMN, pa.int64()))


def _write_rows(files: Sequence[Path], rows: np.ndarray, ranks: np.ndarray, out: str, num_rows: int,
                progress: bool = True) -> None:
    """Pass 2: copy the rows at sorted global positions ``rows`` with their ranks, atomically."""
    schema = _unified_schema(files)
    offset = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            progress_bar(total=num_rows, unit="row", desc="subset: pass 2/2 (copy)", enabled=progress) as bar:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                bar.update(batch.num_rows)
                lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
                if hi > lo:
                    taken = pa.Table.from_batches([batch]).take(rows[lo:hi] - offset)
                    columns = [taken.column(f.name).cast(f.type) if f.name in taken.column_names
                               else pa.nulls(taken.num_rows, f.type) for f in schema if f.name != RANK_COLUMN]
                    writer.write_table(pa.Table.from_arrays(columns + [pa.array(ranks[lo:hi])], schema=schema))
                offset += batch.num_rows


def build_subset(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, spec: SubsetSpec,
                 progress: bool = True) -> SubsetReport:
    """Select a subset of clip tables (parquet files or stage directories) into one parquet file.

    Rows are written in input order with ``subset_rank`` (the rule's order: draw order for DIV, FLT
    and random, input order for Aes); a report JSON is written beside the output as ``{out}.json``.
    ``progress`` shows each pass's rows and time left (:func:`viclip.progress.progress`).
    """
    files = table_files(inputs)
    out = os.fspath(out)  # a local path or an fsspec URL (viclip.atomic uploads it whole)
    refuse_output_over_inputs(out, [*inputs, *files])
    num_rows, positions, cols = _scan(files, spec, progress)
    pool = len(positions)
    chosen, counts = select(spec, pool, cols)
    del cols  # the temporaries below are what bounds memory on a 234M-row table: free as we go
    rows = positions[chosen]
    del positions, chosen
    if spec.rule == "aes":  # a mask: already in input order
        ranks = np.arange(len(rows), dtype=np.int64)
    else:
        ranks = np.argsort(rows, kind="stable")  # the i-th row in input order was drawn ranks[i]-th
        rows = rows[ranks]
    _write_rows(files, rows, ranks, out, num_rows, progress)
    report = SubsetReport(spec=asdict(spec), inputs=[str(f) for f in files], rows=num_rows, pool=pool,
                          selected=len(rows), counts=counts)
    atomic_write(f"{out}.json", json.dumps(asdict(report), indent=1))
    return report
