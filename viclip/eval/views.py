"""Multi-view testing: each video scored on ``clips`` temporal clips x ``crops`` spatial crops, the scores
averaged (K400: 4 x 3, SSv2: 2 x 3, as in VideoMAE's and UMT's fine-tuning scripts).

``1x1`` is the official single-view protocol unchanged (``num_frames`` middle frames, resized to a
square). Otherwise ``clips * num_frames`` middle frames are decoded in one pass and clip ``k`` takes
every ``clips``-th of them from the ``k``-th: each clip spans the whole video, offset from the others
within each of its segments (the idea of UMT's sparse test sampling; here the offsets are sub-segment
middles, so one clip is exactly the official sampling, and every frame is decoded once). A video with
fewer than ``clips * num_frames`` frames repeats its last one (``sample_indices``).

With ``crops > 1`` the short side is resized to the model's size and ``crops`` squares are cut at
even steps along the long side (left, centre, right for 3), as the reference test transform does;
one crop keeps the official square resize.

Scores, not embeddings, are averaged: class scores for zero-shot, softmax probabilities for a
fine-tuned classifier (UMT's ``merge`` with ``method='prob'``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from viclip.data.annotations import VideoText, VideoTextDataset
from viclip.data.formats import MAX_PIXELS, VideoDecodeError
from viclip.data.video import read_video
from viclip.errors import ConfigError

log = logging.getLogger(__name__)
_PATTERN = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Views:
    """``clips`` temporal clips x ``crops`` spatial crops; written ``CLIPSxCROPS`` (``protocol.views``)."""

    clips: int = 1
    crops: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Views:
        match = _PATTERN.match(str(text).strip()) if text is not None else None
        if text is not None and (match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1):
            raise ConfigError(f"protocol.views must be CLIPSxCROPS with both >= 1, e.g. 4x3, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2))) if match else cls()

    @property
    def count(self) -> int:
        return self.clips * self.crops

    def __str__(self) -> str:
        return f"{self.clips}x{self.crops}"


def temporal_clips(frames: torch.Tensor, clips: int) -> torch.Tensor:
    """``[clips * T, ...]`` frames (in time order) -> ``[clips, T, ...]``; clip ``k`` is ``frames[k::clips]``."""
    if frames.shape[0] % clips:
        raise ValueError(f"{frames.shape[0]} frames do not split into {clips} clips")
    return frames.unflatten(0, (-1, clips)).transpose(0, 1)


def spatial_crop(clip: torch.Tensor, index: int, crops: int, size: int) -> torch.Tensor:
    """Crop ``index`` of ``crops`` of a uint8 clip ``[T, 3, H, W]`` -> ``[T, 3, size, size]`` (bicubic)."""
    if crops == 1:
        return F.resize(clip, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    h, w = clip.shape[-2:]
    short = [size, round(w * size / h)] if h <= w else [round(h * size / w), size]
    clip = F.resize(clip, short, interpolation=InterpolationMode.BICUBIC, antialias=True)
    start = round(index * (max(short) - size) / (crops - 1))
    return clip[..., :, start:start + size] if h <= w else clip[..., start:start + size, :]


def view_transform(views: Views) -> str:
    """How each view's frames are resized, for the results' protocol record."""
    if views.crops == 1:
        return "resize to a square, bicubic; mean/std normalised"
    return f"short side resized, {views.crops} squares along the long side, bicubic; mean/std normalised"


def make_views(frames: torch.Tensor, views: Views, size: int) -> torch.Tensor:
    """Decoded uint8 ``[clips * T, H, W, 3]`` -> ``[clips * crops, T, 3, size, size]``, clip-major."""
    clips = temporal_clips(frames.permute(0, 3, 1, 2), views.clips)
    return torch.stack([spatial_crop(c, j, views.crops, size) for c in clips for j in range(views.crops)])


class MultiViewDataset(Dataset):
    """Like :class:`VideoTextDataset` (same items and :meth:`collate`), each video as ``[V, T, 3, S, S]``
    uint8 views; an unreadable one gives ``video=None`` and is counted as skipped."""

    collate = staticmethod(VideoTextDataset.collate)

    def __init__(self, records: Sequence[VideoText], num_frames: int, views: Views, image_size: int,
                 sampling: str = "middle", backend: str = "auto", max_pixels: int | None = MAX_PIXELS,
                 max_seconds: float | None = None) -> None:
        self.records, self.num_frames, self.views = list(records), num_frames, views
        self.image_size, self.sampling, self.backend, self.max_pixels = image_size, sampling, backend, max_pixels
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        try:
            frames = read_video(self.records[i].video, self.num_frames * self.views.clips, self.sampling,
                                backend=self.backend, rng=i, max_pixels=self.max_pixels, max_seconds=self.max_seconds)
        except VideoDecodeError as e:
            log.warning("skipping item %d: %s", i, e)
            return {"index": i, "video": None}
        return {"index": i, "video": make_views(frames, self.views, self.image_size)}


def encode_views(encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """``encode`` over a batch of views ``[B, V, T, 3, S, S]`` -> ``[B, V, D]``."""
    return encode(video.flatten(0, 1)).unflatten(0, video.shape[:2])


def mean_view_scores(score: Callable[[torch.Tensor], torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
    """``score`` of each view's embeddings ``[N, V, D]`` averaged over views (``[N, D]``: one view)."""
    if embeddings.ndim == 2:
        return score(embeddings)
    return torch.stack([score(embeddings[:, v]) for v in range(embeddings.shape[1])]).mean(0)
