"""Training shards from a clip table (or a subset of it): the last step before ``viclip.data.stream``.

Kept rows are looked up in the stage tars they were written to (``clip_tar``/``clip_key``), read
one tar at a time in a single sequential pass, and rewritten through
:class:`~viclip.data.tars.ShardWriter` with the row's caption as ``.txt`` and every column as
``.json``, into size-bounded tars with a ``sizes.json``. ``clips_dir`` and ``out_dir`` may be any
fsspec URL: tars are uploaded whole once finished and ``sizes.json`` last (:mod:`viclip.atomic`).
"""

from __future__ import annotations

import math
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from viclip.atomic import filesystem, join
from viclip.curation.stages import clips_dir_of
from viclip.curation.table import read_tables
from viclip.data.tars import ShardWriter
from viclip.progress import progress as progress_bar


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def make_shards(tables: Sequence[str | os.PathLike] | pa.Table, clips_dir: str | os.PathLike | None,
                out_dir: str | os.PathLike, max_samples: int = 1000, max_bytes: int = 1 << 30,
                caption_column: str = "caption", allow_empty_captions: bool = False,
                progress: bool = True) -> dict[str, int]:
    """Write the kept clips of ``tables`` to training tars under ``out_dir``; returns ``{tar: samples}``.

    ``clips_dir`` is the stage directory holding the tars named in ``clip_tar``; by default the one
    that the given stage directory (or the folder of a table file) is or records, so captioning and
    scoring stage outputs work directly.
    """
    if isinstance(tables, pa.Table):
        table = tables
    else:
        table = read_tables(tables)
        if clips_dir is None:
            homes = {clips_dir_of(Path(t) if Path(t).is_dir() else Path(t).parent) for t in tables}
            if len(homes) != 1:
                raise ValueError("tables from several stages: pass clips_dir (the stage directory with the tars)")
            clips_dir = homes.pop()
    if clips_dir is None:
        raise ValueError("make_shards needs clips_dir when given an in-memory table")
    missing = [c for c in ("status", "clip_tar", "clip_key") if c not in table.column_names]
    if missing:
        raise ValueError(f"clip table lacks column(s) {missing}: is it a split_scenes/fetch_clips table?")
    if caption_column not in table.column_names and not allow_empty_captions:
        raise ValueError(f"clip table has no caption column {caption_column!r} (caption the clips first, "
                         "or pass allow_empty_captions)")
    table = table.filter(pc.equal(table["status"], "kept"))
    rows = table.to_pylist()
    by_tar: dict[str, dict[str, dict]] = {}
    for row in rows:
        caption = row.get(caption_column)
        if not caption and not allow_empty_captions:
            raise ValueError(f"clip {row.get('clip_id')} has no {caption_column!r}")
        by_tar.setdefault(row["clip_tar"], {})[row["clip_key"]] = row

    fs = filesystem(clips_dir)[0]
    with ShardWriter(out_dir, max_samples=max_samples, max_bytes=max_bytes) as writer, \
            progress_bar(total=len(rows), unit="clip", desc=f"shards to {out_dir}", enabled=progress) as bar:
        for tar_name, wanted in by_tar.items():
            path = join(clips_dir, tar_name)
            if not fs.exists(path):
                raise FileNotFoundError(f"stage tar {path} (named in clip_tar) not found")
            found = 0
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext != "mp4" or key not in wanted:
                        continue
                    row = wanted[key]
                    meta = {k: _json_value(v) for k, v in row.items() if k != caption_column}
                    writer.write(tar.extractfile(member).read(), row.get(caption_column) or "", meta)
                    found += 1
                    bar.update(1)
            if found != len(wanted):
                raise ValueError(f"{path}: {len(wanted) - found} of the table's clips are missing from the tar")
    return writer.sizes
