"""The clip table: one parquet row per candidate clip (kept or dropped) and per failed video.

Every stage shard writes one table with this schema, so tables concatenate and later stages
(captioning, scoring, subsets, ``make_shards``) add columns or select rows. ``status`` is ``kept``,
``dropped`` (``reason`` says why: ``still``, ``dynamic``, ``too_short``, ``too_long``, ``empty``) or
``failed``: the row stands for the whole video, ``reason`` is one of
:data:`viclip.curation.errors.FAILURE_REASONS` (``missing``, ``download_failed``, ``no_video_stream``,
``undecodable``, ``bad_timestamps``, ``timeout``, ``crashed``, ``error``) and ``error`` holds the
message; ``--retry-failed`` redoes such videos. Kept clips live in the shard's tar under
``clip_tar``/``clip_key``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from viclip.atomic import atomic_path
from viclip.errors import DataError, OutputError

CLIP_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("clip_id", pa.string()),
    ("clip_index", pa.int32()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("error", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("duration", pa.float64()),
    ("frames", pa.int32()),
    ("fps", pa.float32()),
    ("motion_mean", pa.float32()),
    ("motion_std", pa.float32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bytes", pa.int64()),
    ("source_duration", pa.float64()),
    ("source_fps", pa.float32()),
    ("source_width", pa.int32()),
    ("source_height", pa.int32()),
    ("shard", pa.int32()),
    ("clip_tar", pa.string()),
    ("clip_key", pa.string()),
    ("caption", pa.string()),
    ("aesthetic", pa.float32()),
    ("clip_text_sim", pa.float32()),
    ("extra", pa.string()),
])
STATUSES = ("kept", "dropped", "failed")
STATS_SUFFIX = ".stats.json"  # written last by a stage: its presence marks the shard's table complete


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of the schema's columns) as a table with the full schema."""
    unknown = {k for r in rows for k in r} - set(CLIP_SCHEMA.names)
    if unknown:
        raise KeyError(f"clip rows have columns outside CLIP_SCHEMA: {sorted(unknown)}")
    return pa.Table.from_pylist(list(rows), schema=CLIP_SCHEMA)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write parquet atomically: a killed job leaves no half-written table under the final name."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def table_files(paths: Sequence[str | os.PathLike], what: str = "clip table", hint: str = "") -> list[Path]:
    """Parquet files named directly, plus the finished shards (those with a stats file) of stage directories
    (clip tables, or embed_clips' embedding shards: ``what`` and ``hint`` word the errors)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            done = sorted(p.glob(f"*{STATS_SUFFIX}"))
            files += [s.with_name(s.name.removesuffix(STATS_SUFFIX) + ".parquet") for s in done]
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{what} not found: {p}{hint}")
    if not files:
        raise FileNotFoundError(f"no finished {what}s in {[str(p) for p in paths]}")
    return files


def require_text_columns(schema: pa.Schema, names: Sequence[str], source: str | os.PathLike) -> None:
    """DataError naming the file, column and type when a column that holds text (a caption, a status, a tar
    name) holds numbers or lists, as a table written by other tools may: they would be written as ``12345``."""
    for name in names:
        if name in schema.names:
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise DataError(f"{source}: column {name!r} must be text, got {kind}")


def refuse_output_over_inputs(out: str | os.PathLike, inputs: Sequence[str | os.PathLike | None],
                              option: str = "--out") -> None:
    """Raise OutputError when the output is an input, holds one, or sits inside an input stage directory
    (one with finished shards): its tars or tables would be replaced. URLs are not compared."""
    if "://" in os.fspath(out):
        return
    target = Path(out).resolve()
    for given in inputs:
        if given is None or "://" in os.fspath(given):
            continue
        source = Path(given).resolve()
        in_stage = target.is_relative_to(source) and source.is_dir() and any(source.glob(f"*{STATS_SUFFIX}"))
        if target == source or source.is_relative_to(target) or in_stage:
            raise OutputError(f"{option} {out} overlaps the input {given}: writing there would replace the "
                              "input's files; choose an output directory apart from the inputs")


def read_tables(paths: Sequence[str | os.PathLike]) -> pa.Table:
    """Concatenate clip tables: parquet files, or stage directories (their finished shards only)."""
    return pa.concat_tables([pq.read_table(f) for f in table_files(paths)], promote_options="default")
