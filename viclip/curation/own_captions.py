"""Bring your own captions: a caption file joined onto a clip table, so captions from elsewhere go straight
to shards (``make-shards --captions FILE``) or into a caption stage (``caption-clips --captions FILE``).

The file is CSV, JSON (a list of objects), JSON Lines or parquet, with a string ``caption`` column and
either ``clip_id`` (the clip table's id) or ``video_id``, ``start`` and ``end`` (the source video and
the span in seconds, matched to the table's to the millisecond). A clip the file does not name keeps
the table's caption, if it has one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from viclip.errors import DataError

CAPTION_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
SPAN_KEYS = ("video_id", "start", "end")


def read_caption_file(path: str | os.PathLike) -> pa.Table:
    """The caption file as a table with a string ``caption`` and ``clip_id`` or the span keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"clip_id": pa.string(), "video_id": pa.string(), "caption": pa.string()}))
        elif suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            rows = [json.loads(line) for line in text.splitlines() if line.strip()] if suffix == ".jsonl" \
                else json.loads(text)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{path}: a JSON captions file is a list of objects")
            table = pa.Table.from_pylist(rows)
        else:
            raise DataError(f"{path}: captions file must end in one of {CAPTION_FILE_SUFFIXES}")
    except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable captions file: {e}") from None
    if "caption" not in table.column_names:
        raise DataError(f"{path}: captions file has no 'caption' column (columns: {table.column_names})")
    if not pa.types.is_string(table.schema.field("caption").type) and table.num_rows:
        raise DataError(f"{path}: column 'caption' must be text, got {table.schema.field('caption').type}")
    if "clip_id" not in table.column_names and not set(SPAN_KEYS) <= set(table.column_names):
        raise DataError(f"{path}: captions file needs a 'clip_id' column, or 'video_id', 'start' and 'end'")
    return table


def _keys(table: pa.Table, by_clip: bool) -> list:
    if by_clip:
        return [None if v is None else str(v) for v in table.column("clip_id").to_pylist()]
    starts = pc.round(pc.cast(table.column("start"), pa.float64()), 3).to_pylist()
    ends = pc.round(pc.cast(table.column("end"), pa.float64()), 3).to_pylist()
    return list(zip(table.column("video_id").to_pylist(), starts, ends))


class CaptionFile:
    """A caption file read once (a stage joins it onto every shard's table)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        captions = read_caption_file(path)
        self.by_clip = "clip_id" in captions.column_names
        self.lookup = dict(zip(_keys(captions, self.by_clip), captions.column("caption").to_pylist()))

    def join(self, table: pa.Table) -> tuple[pa.Table, int]:
        """``table`` with the file's captions set on the clips it names; returns it and how many it matched."""
        if self.by_clip and "clip_id" not in table.column_names:
            raise DataError(f"{self.path}: captions keyed by clip_id, but the clip table has no clip_id column")
        old = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * table.num_rows
        keys = _keys(table, self.by_clip)
        new = [self.lookup.get(k, o) for k, o in zip(keys, old)]
        matched = sum(k in self.lookup for k in keys)
        column = pa.array(new, pa.string())
        i = table.column_names.index("caption") if "caption" in table.column_names else -1
        return (table.set_column(i, "caption", column) if i >= 0 else table.append_column("caption", column)), matched
