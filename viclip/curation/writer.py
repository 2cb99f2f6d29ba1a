"""Training shards from a clip table (or a subset of it): the last step before ``viclip.data.stream``.

Kept rows are looked up in the stage tars they were written to (``clip_tar``/``clip_key``; each tar's
headers are indexed once, then members are read by seeking) and rewritten through
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from viclip.atomic import filesystem, join
from viclip.curation.own_captions import CaptionFile
from viclip.curation.stage_dir import clips_dir_of
from viclip.curation.table import read_tables, refuse_output_over_inputs, require_text_columns
from viclip.data.tars import ShardWriter, member_key, read_member
from viclip.errors import ConfigError, DataError
from viclip.progress import progress as progress_bar


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


NO_CAPTIONS = ("caption the clips first (viclip-curate caption-clips), join captions of your own "
               "(--captions FILE), name the table's caption column (--caption-column), or write empty "
               "captions (--allow-empty-captions)")


def _order(rows: list[dict], global_shuffle: bool, seed: int) -> list[dict]:
    """Rows in a seeded random order across all sources (clips of one video spread over the shards), or
    the table's order (tar by tar: one sequential read of each stage tar)."""
    if not global_shuffle:
        return sorted(rows, key=lambda r: r["clip_tar"])  # stable: table order within a tar
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


class _StageTars:
    """Stage tars opened on first use and kept open (tarfile indexes their headers once), read by key."""

    def __init__(self, clips_dir: str | os.PathLike) -> None:
        self.clips_dir, self.fs = clips_dir, filesystem(clips_dir)[0]
        self.open: dict[str, tuple[Any, tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def read(self, tar_name: str, key: str) -> bytes:
        if tar_name not in self.open:
            path = join(self.clips_dir, tar_name)
            if not self.fs.exists(path):
                raise FileNotFoundError(f"stage tar {path} (named in clip_tar) not found: give --clips-dir, "
                                        "the stage directory holding the table's tars")
            f = self.fs.open(path, "rb")
            tar = tarfile.open(fileobj=f)  # noqa: SIM115 - closed in close()
            videos = {}
            for m in tar.getmembers():
                name = member_key(m.name)
                if m.isfile() and name is not None and name[1] == "mp4":
                    videos[name[0]] = m
            self.open[tar_name] = (f, tar, videos)
        _, tar, videos = self.open[tar_name]
        if key not in videos:
            raise DataError(f"{join(self.clips_dir, tar_name)}: no clip {key}.mp4 (named in clip_key)")
        return read_member(tar, videos[key], join(self.clips_dir, tar_name))

    def close(self) -> None:
        for f, tar, _ in self.open.values():
            tar.close()
            f.close()
        self.open.clear()


def make_shards(tables: Sequence[str | os.PathLike] | pa.Table, clips_dir: str | os.PathLike | None,
                out_dir: str | os.PathLike, max_samples: int = 1000, max_bytes: int = 1 << 30,
                caption_column: str = "caption", captions: str | None = None, allow_empty_captions: bool = False,
                global_shuffle: bool = True, seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Write the kept clips of ``tables`` to training tars under ``out_dir``; returns ``{tar: samples}``.

    ``clips_dir`` is the stage directory holding the tars named in ``clip_tar``; by default the one
    that the given stage directory (or the folder of a table file) is or records, so captioning and
    scoring stage outputs work directly. ``captions`` is a file of captions of one's own
    (:mod:`viclip.curation.own_captions`). ``global_shuffle`` writes the clips in a ``seed``-ed random
    order across the whole input, so a loader's shuffle buffer mixes videos (the official trainer
    samples globally; docs/fidelity.md); off, clips keep the table's order, one tar after another.
    """
    if isinstance(tables, pa.Table):
        table, source = tables, "the clip table"
    else:
        table, source = read_tables(tables), ", ".join(map(str, tables))
        if clips_dir is None:
            homes = {clips_dir_of(Path(t) if Path(t).is_dir() else Path(t).parent) for t in tables}
            if len(homes) != 1:
                raise ConfigError("tables from several stages: give --clips-dir (the stage directory with the tars)")
            clips_dir = homes.pop()
        refuse_output_over_inputs(out_dir, [*tables, clips_dir])
    if clips_dir is None:
        raise ConfigError("make_shards needs clips_dir when given an in-memory table")
    missing = [c for c in ("status", "clip_tar", "clip_key") if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: clip table lacks column(s) {missing}: is it a split_scenes/fetch_clips table?")
    if captions is not None:
        table, _ = CaptionFile(captions).join(table)
    require_text_columns(table.schema, ("status", "clip_tar", "clip_key", caption_column), source)
    if caption_column not in table.column_names and not allow_empty_captions:
        raise DataError(f"{source}: no caption column {caption_column!r}: {NO_CAPTIONS}")
    table = table.filter(pc.equal(table["status"], "kept"))
    rows = table.to_pylist()
    uncaptioned = [str(row.get("clip_id")) for row in rows if not row.get(caption_column)]
    if uncaptioned and not allow_empty_captions:
        named = f" ({captions} captions the others)" if captions is not None and len(uncaptioned) < len(rows) else ""
        raise DataError(f"{source}: {len(uncaptioned)} of {len(rows)} kept clips have no {caption_column!r}{named}, "
                        f"e.g. {', '.join(uncaptioned[:3])}: {NO_CAPTIONS}")

    tars = _StageTars(clips_dir)
    with ShardWriter(out_dir, max_samples=max_samples, max_bytes=max_bytes) as writer, \
            progress_bar(total=len(rows), unit="clip", desc=f"shards to {out_dir}", enabled=progress) as bar:
        try:
            for row in _order(rows, global_shuffle, seed):
                meta = {k: _json_value(v) for k, v in row.items() if k != caption_column}
                writer.write(tars.read(row["clip_tar"], row["clip_key"]), row.get(caption_column) or "", meta)
                bar.update(1)
        finally:
            tars.close()
    return writer.sizes
