"""Multi-view testing: each video scored on ``clips`` temporal clips x ``crops`` spatial crops, the scores
averaged (K400: 4 x 3, SSv2: 2 x 3, as in VideoMAE's and UMT's fine-tuning scripts).

``1x1`` is the official single-view protocol unchanged (``num_frames`` middle frames, resized to a
square). Otherwise ``clips * num_frames`` middle frames are decoded in one pass and clip ``k`` takes
every ``clips``-th of them from the ``k``-th: each clip spans the whole video, offset from the others
within each of its segments (the idea of UMT's sparse test sampling; here the offsets are sub-segment
middles, so one clip is exactly the official sampling, and every frame is decoded once). A video with
fewer than ``clips * num_frames`` frames repeats its last one (``sample_indices``).

With ``crops > 1`` the short side is resized to the model's size and ``crops`` squares are cut at
even steps along the long side (left, centre, right for 3). ``view_resize="official"`` is VideoMAE's and
UMT's test transform: bilinear without antialiasing (their ``cv2.INTER_LINEAR``), the long side and the
crop starts truncated to whole pixels; ``"bicubic"`` resizes bicubic with sizes and starts rounded. Both
antialias only with ``protocol.antialias``. One crop keeps the single view's square resize, so the
clips of a ``4x1`` run are each a ``1x1`` run's input.

Scores, not embeddings, are averaged: class scores for zero-shot, softmax probabilities for a
fine-tuned classifier (UMT's ``merge`` with ``method='prob'``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from viclip.data.annotations import VideoText, VideoTextDataset
from viclip.data.formats import VideoDecodeError
from viclip.data.transforms import resize_frames
from viclip.data.video import read_video
from viclip.errors import ConfigError
from viclip.eval.protocol import VideoProtocol

log = logging.getLogger(__name__)
_PATTERN = re.compile(r"^(\d+)x(\d+)$")
VIEW_RESIZES = {"official": "bilinear", "bicubic": "bicubic"}  # protocol.view_resize -> interpolation


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


def spatial_crop(clip: torch.Tensor, index: int, crops: int, size: int, resize: str = "official",
                 antialias: bool = False) -> torch.Tensor:
    """Crop ``index`` of ``crops`` of a uint8 clip ``[T, 3, H, W]`` -> ``[T, 3, size, size]`` (module doc)."""
    if crops == 1:
        return resize_frames(clip, [size, size], antialias)
    h, w = clip.shape[-2:]
    whole = int if resize == "official" else round  # UMT: int(size * long / short), int(k * step)
    short = [size, whole(w * size / h)] if h <= w else [whole(h * size / w), size]
    clip = resize_frames(clip, short, antialias, VIEW_RESIZES[resize])
    start = whole(index * (max(short) - size) / (crops - 1))
    return clip[..., :, start:start + size] if h <= w else clip[..., start:start + size, :]


def view_transform(views: Views, resize: str = "official") -> str:
    """How each view's frames are resized, for the results' protocol record."""
    if views.crops == 1:
        return "resize to a square, bicubic; mean/std normalised"
    return (f"short side resized, {views.crops} squares along the long side, {VIEW_RESIZES[resize]}"
            f"{' (as UMT)' if resize == 'official' else ''}; mean/std normalised")


def make_views(frames: torch.Tensor, views: Views, size: int, resize: str = "official",
               antialias: bool = False) -> torch.Tensor:
    """Decoded uint8 ``[clips * T, H, W, 3]`` -> ``[clips * crops, T, 3, size, size]``, clip-major."""
    clips = temporal_clips(frames.permute(0, 3, 1, 2), views.clips)
    return torch.stack([spatial_crop(c, j, views.crops, size, resize, antialias)
                        for c in clips for j in range(views.crops)])


class MultiViewDataset(Dataset):
    """Like :class:`VideoTextDataset` (same items and :meth:`collate`), each video as ``[V, T, 3, S, S]``
    uint8 views; an unreadable one gives ``video=None`` and is counted as skipped."""

    collate = staticmethod(VideoTextDataset.collate)

    def __init__(self, records: Sequence[VideoText], protocol: VideoProtocol, backend: str = "auto") -> None:
        self.records, self.protocol, self.backend = list(records), protocol, backend
        self.views = Views.parse(protocol.views)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        p = self.protocol
        try:
            frames = read_video(self.records[i].video, p.num_frames * self.views.clips, p.sampling,
                                backend=self.backend, rng=i, max_pixels=p.max_pixels, max_seconds=p.max_seconds)
        except VideoDecodeError as e:
            log.warning("skipping item %d: %s", i, e)
            return {"index": i, "video": None}
        return {"index": i, "video": make_views(frames, self.views, p.image_size, p.view_resize, p.antialias)}


def encode_views(encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """``encode`` over a batch of views ``[B, V, T, 3, S, S]`` -> ``[B, V, D]``."""
    return encode(video.flatten(0, 1)).unflatten(0, video.shape[:2])


def mean_view_scores(score: Callable[[torch.Tensor], torch.Tensor], embeddings: torch.Tensor) -> torch.Tensor:
    """``score`` of each view's embeddings ``[N, V, D]`` averaged over views (``[N, D]``: one view)."""
    if embeddings.ndim == 2:
        return score(embeddings)
    return torch.stack([score(embeddings[:, v]) for v in range(embeddings.shape[1])]).mean(0)
