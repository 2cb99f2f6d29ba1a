"""Decoded frames of one shard's kept clips, for the model stages (captioning, scoring).

Clips are read by key straight from the first stage's tars (``tarfile`` indexes member headers
once per worker process, then seeks), decoded in DataLoader workers and yielded in table order, so
a GPU stage keeps its model busy while the CPU decodes. A clip that is missing or cannot be decoded
comes back with its error instead of frames: the stage counts it and leaves its columns empty.
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from viclip.data.video import VideoDecodeError


@dataclass(frozen=True)
class ClipRef:
    """Where a kept clip is: its table row, tar and key, and its duration (for frame rates)."""

    row: int
    tar: str
    key: str
    duration: float


# (mp4 bytes, clip, label for errors) -> named uint8 frame tensors
FrameSampler = Callable[[bytes, ClipRef, str], dict[str, torch.Tensor]]


def kept_clips(table: pa.Table) -> list[ClipRef]:
    """The kept rows of a clip table that have a clip in a tar, in table order."""
    missing = [c for c in ("status", "clip_tar", "clip_key") if c not in table.column_names]
    if missing:
        raise KeyError(f"clip table lacks columns {missing}: give a stage output (split_scenes or later)")
    cols = {c: table.column(c).to_pylist() for c in ("status", "clip_tar", "clip_key")}
    durations = table.column("duration").to_pylist() if "duration" in table.column_names else [None] * len(table)
    return [ClipRef(i, tar, key, float(d) if d is not None and not math.isnan(d) else 0.0)
            for i, (status, tar, key, d) in enumerate(zip(cols["status"], cols["clip_tar"], cols["clip_key"],
                                                          durations))
            if status == "kept" and tar and key]


class ClipFrames(Dataset):
    """Map-style dataset: item ``i`` is ``(row, frames or None, error or None)`` for ``clips[i]``."""

    def __init__(self, clips_dir: str | Path, clips: list[ClipRef], sample: FrameSampler) -> None:
        self.clips_dir, self.clips, self.sample = Path(clips_dir), clips, sample
        self._tars: dict[str, tarfile.TarFile] = {}  # opened lazily: each worker process gets its own

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, tar: str, member: str) -> bytes:
        if tar not in self._tars:
            self._tars[tar] = tarfile.open(self.clips_dir / tar, mode="r:")  # noqa: SIM115 - kept open, closed in close()
        f = self._tars[tar].extractfile(member)
        if f is None:
            raise KeyError(f"{member} is not a file")
        return f.read()

    def __getitem__(self, i: int) -> tuple[int, dict[str, torch.Tensor] | None, str | None]:
        clip = self.clips[i]
        label = f"{self.clips_dir / clip.tar}:{clip.key}"
        try:
            return clip.row, self.sample(self._read(clip.tar, f"{clip.key}.mp4"), clip, label), None
        except (VideoDecodeError, KeyError, OSError, tarfile.TarError) as e:
            return clip.row, None, f"{label}: {type(e).__name__}: {e}"

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()


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
