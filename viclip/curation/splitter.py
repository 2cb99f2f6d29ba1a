"""Scene clips of one source: cuts, the clip filters, and the kept clips re-encoded, in one decode pass.

The two-pass way (:func:`split_two_pass`: :func:`scan_video`, then :func:`extract_clips` over the
kept spans) decodes a source twice. :func:`split_one_pass` decodes it once: every frame goes to
the scene detector and, once its cuts are final (``min_scene_len`` seconds later, the furthest back
PySceneDetect places a cut; for TransNetV2 once its window is predicted, 75 frames later plus 50 per
extra window in a batch), to the encoder of the scene it belongs to; a transition's frames (TransNetV2's
gaps) go to none. When a scene ends its clips are decided by the same :func:`scene_clips` and its
bytes kept or dropped, so memory holds at most those delayed frames (the detector's look-ahead) and
one scene's clip, whatever the source's length. The cuts and decisions are then taken from the
finished scan exactly as the two-pass path takes them (:func:`candidate_clips`); a kept
clip the pass could not encode (the parts of a long scene under ``long_clips="split"``, a scene
longer than ``max_clip``) is cut by the extractor afterwards.

The one pass decodes as the scan does (``SceneConfig.skip_deblock`` included), so the detector sees
the very pixels the two-pass scan sees. Stream copy and clips with audio take the two-pass path.
"""

from __future__ import annotations

import bisect
import os
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from viclip.curation.extract import ClipEncoder, ClipGeometry, ExtractConfig, ExtractedClip, extract_clips
from viclip.curation.filters import ClipSpan, FilterConfig, candidate_clips, scene_clips
from viclip.curation.scenes import (
    SceneConfig,
    SceneScanner,
    VideoScan,
    demux_continuous,
    open_video,
    scan_video,
)

HOLD_MARGIN = 0.1  # seconds of frames held beyond min_scene_len, against rounding in PySceneDetect's times


@dataclass
class Split:
    """A source's scan, its candidate clips (scene order) and the encoded clip of each kept one."""

    scan: VideoScan
    candidates: list[ClipSpan]
    clips: list[ExtractedClip | None]  # aligned with candidates; None where dropped or empty


def split_two_pass(path: str | os.PathLike, scenes: SceneConfig, filters: FilterConfig,
                   extract: ExtractConfig) -> Split:
    """Scan the whole source, decide the clips, then decode the kept spans again to cut them."""
    scan = scan_video(path, scenes)
    candidates = candidate_clips(scan, filters)
    kept = [i for i, c in enumerate(candidates) if not c.reason]
    clips: list[ExtractedClip | None] = [None] * len(candidates)
    for i, clip in zip(kept, extract_clips(path, [(candidates[i].start, candidates[i].end) for i in kept], extract)):
        clips[i] = clip
    return Split(scan, candidates, clips)


def split_one_pass(path: str | os.PathLike, scenes: SceneConfig, filters: FilterConfig,
                   extract: ExtractConfig) -> Split:
    """Decode once: detect, filter and encode together (re-encoding only, without audio)."""
    if extract.copy or extract.audio:
        raise ValueError("split_one_pass re-encodes video only: use split_two_pass for copy=True or audio=True")
    with av.open(str(path)) as container:
        stream = open_video(container, str(path), scenes.threads, scenes.skip_deblock)
        scanner = SceneScanner(stream, scenes, str(path))
        encoder = _SceneEncoder(stream, scanner, scenes, filters, extract)
        for packet in demux_continuous(container, [stream]):
            for frame in packet.decode():
                encoder.add(frame, scanner.add(frame))
        scan = scanner.finish()
        encoded = encoder.finish(scan.end)
    candidates = candidate_clips(scan, filters)
    clips = [None if c.reason else encoded.get((c.first, c.stop)) for c in candidates]
    missing = [i for i, c in enumerate(candidates) if not c.reason and (c.first, c.stop) not in encoded]
    for i, clip in zip(missing, extract_clips(path, [(candidates[i].start, candidates[i].end) for i in missing],
                                              extract)):
        clips[i] = clip
    return Split(scan, candidates, clips)


class _SceneEncoder:
    """Feeds decoded frames, after a delay, to an encoder per scene and keeps the clips the filters keep.

    Keys of the result are ``(first, stop)`` frame ranges of whole scenes. A scene is left out
    (and cut later by the extractor if it is kept) when this pass cannot encode all of it: it grew
    past ``max_clip``, or a cut arrived for a frame already encoded (never, for PySceneDetect's
    detectors within ``min_scene_len``; checked all the same).
    """

    def __init__(self, stream: av.video.stream.VideoStream, scanner: SceneScanner, scenes: SceneConfig,
                 filters: FilterConfig, extract: ExtractConfig) -> None:
        self.stream, self.scanner, self.filters, self.extract = stream, scanner, filters, extract
        self.time_base = Fraction(stream.time_base)
        self.hold = scenes.min_scene_len + HOLD_MARGIN
        self.queue: deque[tuple[int, av.VideoFrame]] = deque()
        self.cuts: list[int] = []  # cuts not yet reached by the released frames, ascending
        self.first = 0  # first frame of the scene being encoded
        self.released = 0  # frames given to scenes so far
        self.encoder: ClipEncoder | None = None
        self.broken = False  # the current scene cannot be encoded whole in this pass
        self.geometry: ClipGeometry | None = None
        self.clips: dict[tuple[int, int], ExtractedClip] = {}

    def add(self, frame: av.VideoFrame, cuts: list[int]) -> None:
        for cut in cuts:
            if cut < self.released:  # its frames went to the previous scene's encoder
                self._drop_encoder()
                self.broken = True
            else:
                bisect.insort(self.cuts, cut)
        index = self.scanner.num_frames - 1
        self.queue.append((index, frame))
        while self.queue and self.scanner.settled(self.queue[0][0], self.hold):
            self._release(*self.queue.popleft())

    def finish(self, end: float) -> dict[tuple[int, int], ExtractedClip]:
        while self.queue:
            self._release(*self.queue.popleft())
        self._end_scene(self.released, end)
        return self.clips

    def _time(self, i: int) -> float:
        return float(self.scanner.pts[i] * self.time_base)

    def _release(self, i: int, frame: av.VideoFrame) -> None:
        while self.cuts and self.cuts[0] <= i:
            if self.cuts.pop(0) == i:
                self._end_scene(i, self.scanner.frame_time(i))
        self.released = i + 1
        self.broken |= self.scanner.in_gap(i)  # a transition's frames belong to no clip
        if self.broken:
            return
        if self.encoder is None:
            self.geometry = self.geometry or ClipGeometry.of(self.stream, frame, self.extract.short_side)
            self.encoder = ClipEncoder(self.stream, self.geometry, None, self.extract, None)
        pts = self.scanner.pts[i]
        duration = frame.duration or self.scanner.step
        self.encoder.add_video(frame, pts, self._time(i), float((pts + duration) * self.time_base))
        if self._time(i) - self._time(self.first) > self.filters.max_clip:  # never kept whole: cut later
            self._drop_encoder()
            self.broken = True

    def _end_scene(self, stop: int, end: float) -> None:
        """Frames ``[first, stop)`` are a finished scene ending at ``end`` (as the scan times it): keep
        its clip if the filters keep it whole."""
        if stop > self.first and self.encoder is not None:
            # the arrays VideoScan holds, so that this decision is the one candidate_clips makes
            times = np.asarray(self.scanner.pts[self.first:stop], dtype=np.int64) * float(self.time_base)
            diffs = np.asarray(self.scanner.diffs[self.first:stop], dtype=np.float32)
            clips = scene_clips(self.first, times, diffs, end, self.filters)
            if len(clips) == 1 and not clips[0].reason:
                if stop < self.scanner.num_frames:  # a clip ends where the next scene begins
                    self.encoder.last_end = self._time(stop)
                clip = self.encoder.close()
                if clip is not None:
                    self.clips[(self.first, stop)] = clip
                self.encoder = None
        self._drop_encoder()
        self.first, self.broken = stop, False

    def _drop_encoder(self) -> None:
        if self.encoder is not None:
            self.encoder.discard()
            self.encoder = None
