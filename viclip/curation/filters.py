"""Clip filters: length bounds and the still / extreme-dynamics motion filter (paper section 3.1).

Motion is the mean absolute luma difference between consecutive frames at the detection size, in
grey levels (0-255), per clip: its mean says how much changes, its spread (standard deviation)
says whether change comes in bursts (flashes, strobing) rather than as steady motion. Default
thresholds come from the measurements printed by ``bench/curation.py --motion`` (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from viclip.curation.scenes import VideoScan

LONG_CLIP_POLICIES = ("drop", "split")


@dataclass(frozen=True)
class FilterConfig:
    """Clip filtering options.

    Length bounds follow the paper's FLT filtering (appendix E.1: clips shorter than 1 s or longer
    than 120 s are removed); ``long_clips="split"`` instead cuts a long scene into equal parts no
    longer than ``max_clip``. A clip is ``still`` when its mean motion is below
    ``still_max_motion`` and ``dynamic`` when its mean motion is above ``dynamic_min_motion`` or its
    spread above ``dynamic_min_spread``.
    """

    min_clip: float = 1.0
    max_clip: float = 120.0
    long_clips: str = "drop"
    still_max_motion: float = 0.5
    dynamic_min_motion: float = 26.0
    dynamic_min_spread: float = 12.0

    def __post_init__(self) -> None:
        if self.long_clips not in LONG_CLIP_POLICIES:
            raise ValueError(f"long_clips must be one of {LONG_CLIP_POLICIES}, got {self.long_clips!r}")
        if not 0 <= self.min_clip < self.max_clip:
            raise ValueError(f"need 0 <= min_clip < max_clip, got {self.min_clip}, {self.max_clip}")
        if self.long_clips == "split" and self.max_clip < 2 * self.min_clip:
            raise ValueError("long_clips='split' needs max_clip >= 2 * min_clip so that parts stay long enough")


@dataclass
class ClipSpan:
    """One candidate clip: frames ``[first, stop)`` of the scan, its times, motion and fate."""

    first: int
    stop: int
    start: float
    end: float
    motion_mean: float
    motion_std: float
    reason: str = ""  # empty when kept

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def frames(self) -> int:
        return self.stop - self.first


def motion_stats(diffs: np.ndarray) -> tuple[float, float]:
    """Mean and spread of a clip's frame differences (the first frame's, across the cut, excluded)."""
    inner = diffs[1:]
    if inner.size == 0:
        return 0.0, 0.0
    return float(inner.mean()), float(inner.std())


def motion_reason(mean: float, std: float, cfg: FilterConfig) -> str:
    """``"still"``, ``"dynamic"`` or ``""`` (kept) for a clip's motion statistics."""
    if mean < cfg.still_max_motion:
        return "still"
    if mean > cfg.dynamic_min_motion or std > cfg.dynamic_min_spread:
        return "dynamic"
    return ""


def split_scene(times: np.ndarray, end: float, max_clip: float) -> list[tuple[int, int]]:
    """Cut a scene (its frame ``times`` and end) into the fewest equal-duration parts no longer than
    ``max_clip``, as ``[first, stop)`` ranges of its frames."""
    start = float(times[0])
    parts = int(np.ceil((end - start) / max_clip - 1e-9))
    if parts <= 1:
        return [(0, len(times))]
    targets = start + (end - start) * np.arange(1, parts) / parts
    bounds = [0, *np.searchsorted(times, targets).astype(int), len(times)]
    return [(a, b) for a, b in pairwise(bounds) if b > a]


def scene_clips(first: int, times: np.ndarray, diffs: np.ndarray, end: float, cfg: FilterConfig) -> list[ClipSpan]:
    """The candidate clips of one scene (long ones split when configured) with motion and drop reason.

    The scene is frames ``first, first + 1, ...`` with their ``times`` and ``diffs``; it ends at
    ``end`` (where the next scene starts). Only this scene's frames are needed, so a streaming
    splitter can decide a scene's clips as soon as the scene is over.
    """
    pieces = [(0, len(times))]
    if end - float(times[0]) > cfg.max_clip and cfg.long_clips == "split":
        pieces = split_scene(times, end, cfg.max_clip)
    clips = []
    for a, b in pieces:
        s, e = float(times[a]), float(times[b]) if b < len(times) else end
        # a split part starts mid-scene, so its first difference is ordinary motion: keep it
        mean, std = motion_stats(diffs[a:b] if a == 0 else np.r_[0.0, diffs[a:b]])
        clip = ClipSpan(first + a, first + b, s, e, mean, std)
        if e - s < cfg.min_clip:
            clip.reason = "too_short"
        elif e - s > cfg.max_clip:
            clip.reason = "too_long"
        else:
            clip.reason = motion_reason(mean, std, cfg)
        clips.append(clip)
    return clips


def candidate_clips(scan: VideoScan, cfg: FilterConfig) -> list[ClipSpan]:
    """Every scene of ``scan`` (long ones split when configured) with its motion and drop reason."""
    return [clip for first, stop in scan.scenes()
            for clip in scene_clips(first, scan.times[first:stop], scan.diffs[first:stop],
                                    scan.span_time(first, stop)[1], cfg)]
