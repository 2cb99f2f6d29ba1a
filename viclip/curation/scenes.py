"""Scene cuts and per-frame motion from one decode pass over a source video.

The paper trims videos with PySceneDetect's ContentDetector at threshold 27 (section 3.1). We drive
the detector ourselves instead of through ``scenedetect.detect``: PyAV's scaler shrinks each
decoded frame straight to the detection size in YUV (converting the full-resolution frame to BGR
first costs more than decoding it), and the luma plane of that small frame gives the frame
differences for the motion filters at no extra decode. Times are presentation timestamps, so
variable-frame-rate sources are cut at the right instants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect.common import FrameTimecode, Timecode
from scenedetect.detectors import ContentDetector

from viclip.curation.errors import SourceError


@dataclass(frozen=True)
class SceneConfig:
    """Scene detection options.

    ``detect_size`` is the long side in pixels that frames are shrunk to before detection; 256
    matches PySceneDetect's own automatic downscale for landscape video, so the cuts are the same.
    ``min_scene_len`` (seconds) is also the window in which bursts of cuts (flashes, strobing) merge
    into one scene, which the motion filter then sees as one extreme-dynamics clip. ``skip_deblock``
    decodes without the H.264/HEVC loop filter (about 20 % faster); detection at 256 px does not see
    the difference (``bench/curation.py`` checks that the cuts match PySceneDetect's).
    """

    threshold: float = 27.0
    min_scene_len: float = 0.5
    detect_size: int = 256
    threads: int = 1  # codec threads per worker process: with one process per core, 1 is fastest
    skip_deblock: bool = True

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.min_scene_len < 0 or self.detect_size < 16:
            raise ValueError(f"invalid SceneConfig: {self} (need threshold > 0, min_scene_len >= 0, "
                             "detect_size >= 16)")


@dataclass
class VideoScan:
    """What one decode pass learns about a source video (times in seconds from its first frame)."""

    times: np.ndarray       # float64 [N] presentation time of every frame
    diffs: np.ndarray       # float32 [N] mean |luma difference| to the previous frame (0 for frame 0)
    cuts: list[int]         # indices of frames that start a new scene (never 0)
    end: float              # end time of the last frame (its time plus its duration)
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        return self.end

    @property
    def fps(self) -> float:
        return self.num_frames / self.end if self.end > 0 else 0.0

    def scenes(self) -> list[tuple[int, int]]:
        """Scenes as ``[first, last + 1)`` frame index ranges; a cut-free video is one scene."""
        bounds = [0, *self.cuts, self.num_frames]
        return [(a, b) for a, b in pairwise(bounds) if b > a]

    def span_time(self, first: int, stop: int) -> tuple[float, float]:
        """Start and end time of frames ``[first, stop)``: a scene ends where the next one starts."""
        end = float(self.times[stop]) if stop < self.num_frames else self.end
        return float(self.times[first]), end


def detect_dims(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Even frame size with the given long side (never upscaled), keeping the aspect ratio."""
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def stream_start(stream: av.video.stream.VideoStream) -> int:
    """Presentation timestamp that counts as time zero (containers such as MPEG-TS start later)."""
    return stream.start_time if stream.start_time is not None else 0


def frame_pts(frame: av.VideoFrame, previous: int | None, step: int) -> int:
    """The frame's pts, or one nominal frame after the previous one when the container omits it."""
    if frame.pts is not None:
        return frame.pts
    return 0 if previous is None else previous + step


def scan_video(path: str | os.PathLike, cfg: SceneConfig = SceneConfig()) -> VideoScan:
    """Decode ``path`` once: frame times, frame differences and ContentDetector cuts.

    Raises whatever PyAV raises for an unreadable file; callers turn that into a failed row.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SourceError("no_video_stream", f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_count = cfg.threads
        if cfg.skip_deblock:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        time_base = Fraction(stream.time_base)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        step = max(1, round(1 / (rate * time_base)))
        start = stream_start(stream)
        detector = ContentDetector(threshold=cfg.threshold, min_scene_len=float(cfg.min_scene_len))
        scaler = VideoReformatter()  # one scaler for the whole video: a per-frame one rebuilds its context

        pts_list: list[int] = []
        diffs: list[float] = []
        cut_pts: list[int] = []
        size = None
        width = height = 0
        prev_pts = None
        prev_luma = None
        last_duration = 0
        tc = None
        for frame in container.decode(stream):
            pts = prev_pts = frame_pts(frame, prev_pts, step)
            if size is None:
                width, height = frame.width, frame.height
                size = detect_dims(width, height, cfg.detect_size)
            small = scaler.reformat(frame, width=size[0], height=size[1], format="yuv420p",
                                    interpolation="FAST_BILINEAR").to_ndarray()
            luma = small[: size[1]]
            diffs.append(0.0 if prev_luma is None else float(cv2.absdiff(luma, prev_luma).mean()))
            prev_luma = luma
            pts_list.append(pts - start)
            last_duration = frame.duration or step
            tc = FrameTimecode(Timecode(pts=pts - start, time_base=time_base), fps=rate)
            bgr = cv2.cvtColor(small, cv2.COLOR_YUV2BGR_I420)
            cut_pts.extend(c.pts for c in detector.process_frame(tc, bgr))
        if tc is None:
            raise SourceError("undecodable", f"{path}: no decodable video frames")
        cut_pts.extend(c.pts for c in detector.post_process(tc))

    pts_arr = np.asarray(pts_list, dtype=np.int64)
    if np.any(np.diff(pts_arr) <= 0):  # decoders emit presentation order; anything else is broken
        raise SourceError("bad_timestamps", f"{path}: frame timestamps are not increasing")
    cuts = sorted({int(np.searchsorted(pts_arr, p)) for p in cut_pts} - {0, len(pts_arr)})
    times = pts_arr * float(time_base)
    end = float((pts_arr[-1] + last_duration) * time_base)
    return VideoScan(times=times, diffs=np.asarray(diffs, dtype=np.float32), cuts=cuts, end=end,
                     width=width, height=height)
