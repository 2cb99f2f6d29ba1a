"""Decoded frames of stored clips, for the model stages (captioning, scoring) and embed-clips.

Clips are read by key straight from the first stage's tars, other tars or video files (``tarfile``
indexes member headers once per worker process, then seeks), decoded in DataLoader workers and
yielded in table order, so a GPU stage keeps its model busy while the CPU decodes. A clip that is
missing or cannot be decoded comes back with its error instead of frames: the stage counts it and
leaves its columns empty.
"""

from __future__ import annotations

import contextlib
import math
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from viclip.data.formats import VideoDecodeError
from viclip.data.tars import member_key, read_member
from viclip.errors import DataError


@dataclass(frozen=True)
class StoredClip:
    """A clip to read, and what its table row carries: a video file, or ``member`` of the tar ``path``.

    ``row`` is its position among the clips of its shard (where results go back), ``duration`` sets
    frame rates, ``error`` is why it cannot be read when that was found while listing it (a bad
    metadata member, a damaged tar).
    """

    path: str
    member: str | None = None
    row: int = 0
    clip_id: str | None = None
    duration: float = 0.0
    caption: str | None = None
    video_id: str | None = None
    aesthetic: float | None = None
    error: str | None = None


# (mp4 bytes or a file path, clip, label for errors) -> named frame tensors
FrameSampler = Callable[[bytes | str, StoredClip, str], dict[str, torch.Tensor]]


def number(value: Any) -> float | None:
    """A float column's value, None for a missing one (null or NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def kept_clips(table: pa.Table, clips_dir: str | Path, source: str = "clip table") -> list[StoredClip]:
    """The kept rows of a clip table that have a clip in a tar of ``clips_dir``, in table order."""
    missing = [c for c in ("status", "clip_tar", "clip_key") if c not in table.column_names]
    if missing:
        raise DataError(f"{source} lacks columns {missing}: give a stage output (split_scenes or later)")
    cols = {c: table.column(c).to_pylist() if c in table.column_names else [None] * len(table)
            for c in ("status", "clip_tar", "clip_key", "clip_id", "duration", "caption", "video_id", "aesthetic")}
    return [StoredClip(str(Path(clips_dir) / tar), f"{key}.mp4", i, cid, number(d) or 0.0,
                       cap if isinstance(cap, str) and cap else None, vid, number(aes))
            for i, (status, tar, key, cid, d, cap, vid, aes) in enumerate(zip(*cols.values()))
            if status == "kept" and tar and key]


class TarMembers:
    """Tars opened on first use and kept open, each DataLoader worker process its own, their headers indexed
    once by :func:`~viclip.data.tars.member_key` (``./k.mp4`` is ``k``'s mp4) up to any damage: a truncated
    tar still gives the members before the cut. The one reader of clips by key for the model stages and
    embed-clips."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[tarfile.TarFile, dict[tuple[str, str], tarfile.TarInfo]]] = {}

    def read(self, path: str | Path, member: str) -> bytes:
        """The bytes of ``member`` (a name such as ``key.mp4``, matched by key and extension) of tar ``path``."""
        path = str(path)
        if path not in self._open:
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - kept open, closed in close()
            index: dict[tuple[str, str], tarfile.TarInfo] = {}
            with contextlib.suppress(tarfile.TarError, OSError, EOFError):
                for m in tar:
                    split = member_key(m.name) if m.isfile() else None
                    if split is not None:
                        index[split] = m
            self._open[path] = tar, index
        tar, index = self._open[path]
        split = member_key(member)
        if split not in index:
            raise DataError(f"{path}: no member {member}")
        return read_member(tar, index[split], path)

    def close(self) -> None:
        for tar, _ in self._open.values():
            tar.close()
        self._open.clear()


class ClipFrames(Dataset):
    """Map-style dataset: item ``i`` is ``(row, frames or None, error or None)`` for ``clips[i]``."""

    def __init__(self, clips: list[StoredClip], sample: FrameSampler) -> None:
        self.clips, self.sample = clips, sample
        self.tars = TarMembers()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[int, dict[str, torch.Tensor] | None, str | None]:
        clip = self.clips[i]
        if clip.error is not None:
            return clip.row, None, clip.error
        label = clip.path if clip.member is None else f"{clip.path}:{clip.member}"
        try:
            data = clip.path if clip.member is None else self.tars.read(clip.path, clip.member)
            return clip.row, self.sample(data, clip, label), None
        except (VideoDecodeError, DataError, OSError, EOFError, tarfile.TarError) as e:
            return clip.row, None, f"{label}: {type(e).__name__}: {e}"

    def close(self) -> None:
        self.tars.close()


def _as_list(items: list) -> list:
    return items


def iter_batches(dataset: ClipFrames, clips_per_batch: int, workers: int) -> Iterator[list[tuple[int, Any, Any]]]:
    """Batches of dataset items in order, decoded by ``workers`` processes (0: in this process)."""
    loader = DataLoader(dataset, batch_size=clips_per_batch, shuffle=False, num_workers=workers,
                        collate_fn=_as_list, prefetch_factor=4 if workers else None)
    try:
        yield from loader
    finally:
        dataset.close()


def decoded_batches(dataset: ClipFrames, clips_per_batch: int, workers: int, errors: dict[int, str],
                    advance: Callable[[int], None]) -> Iterator[list[tuple[int, dict[str, torch.Tensor]]]]:
    """The ``(row, frames)`` of each batch's decoded clips, for a model stage (captioning, scoring): a clip
    that could not be read goes into ``errors`` by row, and ``advance`` moves the stage's progress."""
    for batch in iter_batches(dataset, clips_per_batch, workers):
        errors.update({row: err for row, frames, err in batch if frames is None})
        advance(len(batch))
        ok = [(row, frames) for row, frames, _ in batch if frames is not None]
        if ok:
            yield ok


def set_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Replace the named columns in place, append the new ones."""
    for name, values in columns.items():
        i = table.column_names.index(name) if name in table.column_names else -1
        table = table.set_column(i, name, values) if i >= 0 else table.append_column(name, values)
    return table


def with_result_columns(table: pa.Table, columns: dict[str, pa.Array], errors: dict[int, str]) -> pa.Table:
    """A model stage's table: its result columns set, and the clips it could not decode marked dropped
    (``status``/``reason`` ``undecodable``/``error``), so later stages, subsets, ``make_shards`` and ICL
    sequences skip them like any dropped clip."""
    if errors:
        n = len(table)
        old = {c: table.column(c).to_pylist() if c in table.column_names else [None] * n
               for c in ("status", "reason", "error")}
        columns = {**columns,
                   "status": pa.array(["dropped" if i in errors else s for i, s in enumerate(old["status"])],
                                      pa.string()),
                   "reason": pa.array(["undecodable" if i in errors else r for i, r in enumerate(old["reason"])],
                                      pa.string()),
                   "error": pa.array([errors.get(i, e) for i, e in enumerate(old["error"])], pa.string())}
    return set_columns(table, columns)
