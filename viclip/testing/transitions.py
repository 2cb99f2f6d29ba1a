"""Edited video with known transitions, generated at test time, and a scorer of shot-boundary detectors.

Shots are pans (some drifting vertically) over natural-statistics textures, each with its own colour
cast, joined by hard cuts, cross-dissolves, fades through black and wipes; inside shots there are
distractors that are no transition: a flash (a few near-white frames) and a fast pan. Every event's
frames are known. :func:`score` counts a transition found when a detected boundary falls inside its
span (one frame of slack either side), as TransNetV2's authors count, and reports how many kept clips
hold part of a transition.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from viclip.curation.filters import ClipSpan
from viclip.curation.scenes import VideoScan
from viclip.testing.videos import natural_texture, write_scenes

TRANSITIONS = ("cut", "dissolve", "fade", "wipe")
DISTRACTORS = ("flash", "fast_pan")
SLACK = 1  # frames either side of a span that still count as inside it


@dataclass(frozen=True)
class Event:
    """A transition or a distractor: frames ``[first, stop)`` show it (a cut: ``first == stop``, the first
    frame of the new shot)."""

    kind: str
    first: int
    stop: int

    @property
    def is_transition(self) -> bool:
        return self.kind in TRANSITIONS


class _Shot:
    """A pan over a periodic texture (the FFT texture tiles seamlessly) with a colour cast."""

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        texture = natural_texture(2 * width, 2 * height, seed=int(rng.integers(1 << 30))).astype(np.float32)
        self.texture = np.clip(texture * rng.uniform(0.6, 1.4, size=3), 0, 255)
        self.width, self.height = width, height
        self.x, self.y = rng.uniform(0, 2 * width), rng.uniform(0, 2 * height)
        self.dx, self.dy = rng.uniform(-4, 4) * width / 320, rng.uniform(-1, 1) * height / 180

    def next(self, n: int, dx: float | None = None) -> np.ndarray:
        """The next ``n`` frames, panning ``dx`` pixels per frame across (default: the shot's own pan)."""
        frames = []
        for _ in range(n):
            cols = (int(self.x) + np.arange(self.width)) % self.texture.shape[1]
            rows = (int(self.y) + np.arange(self.height)) % self.texture.shape[0]
            frames.append(self.texture[rows][:, cols])
            self.x, self.y = self.x + (self.dx if dx is None else dx), self.y + self.dy
        return np.stack(frames)


def _blend(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ``len(a)`` frames of a gradual transition from shot frames ``a`` to ``b``."""
    n = len(a)
    t = (np.arange(n, dtype=np.float32) + 1) / (n + 1)  # never a pure frame of either shot
    if kind == "dissolve":
        return a * (1 - t)[:, None, None, None] + b * t[:, None, None, None]
    if kind == "fade":  # A down to black, then B up from black
        level = np.abs(1 - 2 * t)[:, None, None, None]
        return np.where((t < 0.5)[:, None, None, None], a, b) * level
    out = a.copy()  # wipe: B sweeps in from the left
    for i, x in enumerate((t * a.shape[2]).astype(int)):
        out[i, :, :x] = b[i, :, :x]
    return out


def plan(n_events: int, fps: int, seed: int = 0, kinds: Sequence[str] = (*TRANSITIONS, *DISTRACTORS)
         ) -> list[tuple[str, int]]:
    """Event kinds (``kinds`` in turn, shuffled per round) and lengths in frames: dissolves and fades
    of 0.5-2 s, wipes of 0.5-1 s, flashes of 2-4 frames, fast pans of 1 s."""
    rng = np.random.default_rng(seed)
    order = [str(k) for _ in range(-(-n_events // len(kinds))) for k in rng.permutation(kinds)][:n_events]
    seconds = {"cut": (0, 0), "dissolve": (0.5, 2), "fade": (0.5, 2), "wipe": (0.5, 1), "fast_pan": (1, 1)}
    return [(k, int(rng.integers(2, 5)) if k == "flash" else round(rng.uniform(*seconds[k]) * fps)) for k in order]


def frames_of(events: Sequence[tuple[str, int]], width: int, height: int, fps: int, shot_seconds: float,
              seed: int = 0) -> Iterator[tuple[np.ndarray, Event | None]]:
    """Frame chunks of the video with the event each chunk shows (None: ordinary shot frames)."""
    rng = np.random.default_rng(seed + 1)
    shot = _Shot(width, height, rng)
    t = 0
    for kind, n in events:
        pure = int(shot_seconds * fps * rng.uniform(0.8, 1.2))
        yield shot.next(pure), None
        t += pure
        if kind in ("flash", "fast_pan"):
            frames = shot.next(n, dx=None if kind == "flash" else width / 6)  # fast: a width in 6 frames
            if kind == "flash":
                frames = frames * 0.15 + 255 * 0.85
        elif kind == "cut":
            shot, frames = _Shot(width, height, rng), np.zeros((0, height, width, 3), np.float32)
        else:
            new = _Shot(width, height, rng)
            frames = _blend(kind, shot.next(n), new.next(n))
            shot = new
        yield frames, Event(kind, t, t + len(frames))
        t += len(frames)
    pure = int(shot_seconds * fps)
    yield shot.next(pure), None


def write_transitions(path: str | os.PathLike, n_events: int = 12, width: int = 160, height: int = 90, fps: int = 25,
                      shot_seconds: float = 2.0, seed: int = 0, crf: int = 20,
                      kinds: Sequence[str] = (*TRANSITIONS, *DISTRACTORS)) -> list[Event]:
    """Write the edited video (H.264) and return its events in order."""
    events: list[Event] = []

    def chunks() -> Iterator[np.ndarray]:
        for frames, event in frames_of(plan(n_events, fps, seed, kinds), width, height, fps, shot_seconds, seed):
            if event is not None:
                events.append(event)
            if len(frames):
                yield np.clip(frames, 0, 255).astype(np.uint8)

    write_scenes(path, chunks(), fps=fps, crf=crf)
    return events


def detections(scan: VideoScan) -> list[tuple[int, int]]:
    """Detected transitions as inclusive frame ranges: a gap ``[first, stop)`` is one, and each cut that
    bounds no gap is one (the first frame of the new scene)."""
    bounds = {b for gap in scan.gaps for b in gap}
    found = [(a, b - 1) for a, b in scan.gaps] + [(c, c) for c in scan.cuts if c not in bounds]
    return sorted(found)


def _hits(event: Event, found: Sequence[tuple[int, int]]) -> list[int]:
    lo, hi = event.first - SLACK, event.stop + SLACK
    return [i for i, (a, b) in enumerate(found) if a <= hi and b >= lo]


def score(events: Sequence[Event], scan: VideoScan, kept: Sequence[ClipSpan] = ()) -> dict[str, dict[str, float]]:
    """Per transition kind: recall, precision, F1 (each kind's precision is charged every false
    detection) and the count; ``all`` over every kind; per distractor the detections it drew; and
    ``clips``: the fraction of ``kept`` clips holding a transition (:func:`_with_transition`), of any kind and
    per kind."""
    found = detections(scan)
    matched: dict[int, str] = {}  # detection -> the kind of event it falls on
    counts: dict[str, tuple[int, int]] = {}  # kind -> (events, events found)
    for kind in (*TRANSITIONS, *DISTRACTORS):
        hits = [_hits(e, found) for e in events if e.kind == kind]
        for h in hits:
            matched.update({i: kind for i in h if i not in matched})
        counts[kind] = (len(hits), sum(bool(h) for h in hits))
    false = sum(1 for i in range(len(found)) if matched.get(i) not in TRANSITIONS)
    report: dict[str, dict[str, float]] = {}
    for kind in (*TRANSITIONS, "all"):
        kinds = TRANSITIONS if kind == "all" else (kind,)
        n, hit = (sum(counts[k][j] for k in kinds) for j in (0, 1))
        tp = sum(1 for k in matched.values() if k in kinds)
        recall = hit / n if n else float("nan")
        precision = tp / (tp + false) if tp + false else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[kind] = {"n": n, "recall": recall, "precision": precision, "f1": f1}
    for kind in DISTRACTORS:
        report[kind] = {"n": counts[kind][0], "false_detections": counts[kind][1]}
    report["clips"] = {"kept": len(kept), "with_transition": _with_transition(events, kept) / max(1, len(kept))}
    report["clips"].update({f"with_{k}": _with_transition([e for e in events if e.kind == k], kept) / max(1, len(kept))
                            for k in TRANSITIONS})
    return report


def _with_transition(events: Sequence[Event], kept: Sequence[ClipSpan]) -> int:
    """Clips holding frames on both sides of a cut, or a transition frame more than ``SLACK`` frames inside
    its span (the outermost frames of a dissolve are 1/(n+1) mixes, as the boundaries count them)."""
    def holds(c: ClipSpan, e: Event) -> bool:
        if e.first == e.stop:
            return c.first < e.first < c.stop
        return c.first < e.stop - SLACK and c.stop > e.first + SLACK
    return sum(any(holds(c, e) for e in events if e.is_transition) for c in kept)
