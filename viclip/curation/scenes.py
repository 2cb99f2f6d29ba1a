"""Scene cuts and per-frame motion from one decode pass over a source video.

The paper trims videos with PySceneDetect's ContentDetector at threshold 27 (section 3.1), the default
``detector``; ``adaptive`` is PySceneDetect's AdaptiveDetector and ``transnetv2`` the released TransNetV2
network (:mod:`viclip.curation.transnet`), which also sees gradual transitions and leaves their frames
out of every scene (``VideoScan.gaps``); docs/detectors.md says which to pick. We drive
the detector ourselves instead of through ``scenedetect.detect``: PyAV's scaler shrinks each
decoded frame straight to the detection size in YUV (converting the full-resolution frame to BGR
first costs more than decoding it), and the luma plane of that small frame gives the frame
differences for the motion filters at no extra decode. Times are presentation timestamps, so
variable-frame-rate sources are cut at the right instants.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect.common import FrameTimecode, Timecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from viclip.curation.errors import SourceError
from viclip.errors import ConfigError

AVFMT_TS_DISCONT = 0x200  # FFmpeg's format flag: timestamps may jump (MPEG-TS, MPEG-PS, FLV, ...)
DETECTORS = ("content", "adaptive", "transnetv2")


@dataclass(frozen=True)
class SceneConfig:
    """Scene detection options.

    ``detect_size`` is the long side in pixels that frames are shrunk to before detection; 256
    matches PySceneDetect's own automatic downscale for landscape video, so the cuts are the same.
    ``min_scene_len`` (seconds) is also the window in which bursts of cuts (flashes, strobing) merge
    into one scene, which the motion filter then sees as one extreme-dynamics clip. ``skip_deblock``
    decodes without the H.264/HEVC loop filter (7-20 % less decoding CPU); detection at 256 px does
    not see the difference (``bench/curation.py`` checks that the cuts match PySceneDetect's). The
    one-pass splitter encodes clips from the same frames: from a 720p crf-23 source to short side 256
    that moved PSNR against the pristine frames by under 0.1 dB; turn it off (``--no-skip-deblock``)
    for clips kept near the source's size, e.g. viewing-quality ones.

    ``detector``: ``content`` (the paper's; ``threshold`` is its), ``adaptive`` (PySceneDetect's
    defaults) or ``transnetv2`` (``transnet_*``: the thresholds of its two outputs, the authors' 0.5;
    the torch device; windows of 100 frames per forward pass, each adding 50 frames of look-ahead).
    """

    threshold: float = 27.0
    min_scene_len: float = 0.5
    detect_size: int = 256
    threads: int = 1  # codec threads per worker process: with one process per core, 1 is fastest
    skip_deblock: bool = True
    detector: str = "content"
    transnet_cut_threshold: float = 0.5
    transnet_transition_threshold: float = 0.5
    transnet_device: str = "cpu"
    transnet_batch: int = 1

    def __post_init__(self) -> None:
        bad = [f"{name}={getattr(self, name)!r} (need {need})" for name, ok, need in [
            ("threshold", self.threshold > 0, "> 0"), ("min_scene_len", self.min_scene_len >= 0, ">= 0"),
            ("detect_size", self.detect_size >= 16, ">= 16"), ("detector", self.detector in DETECTORS, DETECTORS),
            ("transnet_cut_threshold", 0 < self.transnet_cut_threshold < 1, "in (0, 1)"),
            ("transnet_transition_threshold", 0 < self.transnet_transition_threshold < 1, "in (0, 1)"),
            ("transnet_batch", self.transnet_batch >= 1, ">= 1")] if not ok]
        if bad:
            raise ConfigError(f"scene detection: {'; '.join(bad)}")


# Settings added with the detector switch, at their defaults: a stage directory written before them ran
# ContentDetector, so it resumes under the defaults (viclip.curation.stage_dir.record_or_check_settings).
SETTINGS_INTRODUCED = {name: SceneConfig.__dataclass_fields__[name].default for name in (
    "detector", "transnet_cut_threshold", "transnet_transition_threshold", "transnet_device", "transnet_batch")}


@dataclass
class VideoScan:
    """What one decode pass learns about a source video (times in seconds from its first frame)."""

    times: np.ndarray       # float64 [N] presentation time of every frame
    diffs: np.ndarray       # float32 [N] mean |luma difference| to the previous frame (0 for frame 0)
    cuts: list[int]         # indices of frames that start a new scene or a gap, or end a gap (never 0)
    end: float              # end time of the last frame (its time plus its duration)
    width: int
    height: int
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [first, stop) transitions: in no scene

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
        """Scenes as ``[first, last + 1)`` frame index ranges (gaps left out); a cut-free video is one scene."""
        bounds = [0, *self.cuts, self.num_frames]
        gaps = set(self.gaps)
        return [(a, b) for a, b in pairwise(bounds) if b > a and (a, b) not in gaps]

    def span_time(self, first: int, stop: int) -> tuple[float, float]:
        """Start and end time of frames ``[first, stop)``: a scene ends where the next one starts."""
        end = float(self.times[stop]) if stop < self.num_frames else self.end
        return float(self.times[first]), end


class _ContentDetector(ContentDetector):
    """PySceneDetect's ContentDetector (default weights: hue, saturation, value; no edges) with its frame
    distances summed by OpenCV instead of numpy int32 copies (a third of its own time at 256 px). The
    sums are exact integers and the score is formed in PySceneDetect's order, so scores and cuts are
    bit-identical (``tests/test_curation_scenes.py`` and ``bench/curation.py`` compare with ``detect``)."""

    _last_hsv: tuple[np.ndarray, ...] | None = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        hsv = cv2.split(cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV))
        last, self._last_hsv = self._last_hsv, hsv
        if last is None:
            return 0.0
        pixels = float(hsv[0].shape[0] * hsv[0].shape[1])
        hue, sat, lum = (cv2.norm(a, b, cv2.NORM_L1) / pixels for a, b in zip(hsv, last))
        return (0 + hue * 1.0 + sat * 1.0 + lum * 1.0 + 0.0 * 0.0) / 3.0  # ContentDetector's weighted mean


def detect_dims(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Even frame size with the given long side (never upscaled), keeping the aspect ratio."""
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def stream_start(stream: av.video.stream.VideoStream) -> int:
    """Presentation timestamp that counts as time zero (containers such as MPEG-TS start later)."""
    return stream.start_time if stream.start_time is not None else 0


def demux_continuous(container: av.container.InputContainer,
                     streams: Sequence[av.stream.Stream]) -> Iterator[av.Packet]:
    """Packets of ``streams`` in file order, with a clock that restarts mid-file made to run on.

    MPEG-TS and the other formats FFmpeg flags ``TS_DISCONT`` may jump back in time (recordings
    joined end to end, a broadcast splice). As FFmpeg's command line does, everything after such a
    jump is shifted to follow on one frame after the packet before it, so a source keeps one
    timeline; in formats without discontinuities a jump stays what it is, a broken file.
    """
    heal = bool(container.format.flags & AVFMT_TS_DISCONT)
    offsets = {s.index: 0 for s in streams}
    steps = {s.index: _packet_step(s) for s in streams}
    last: dict[int, int] = {}  # stream index -> the shifted dts of its latest packet
    for packet in container.demux(*streams):
        i = packet.stream.index
        if heal and packet.dts is not None:
            dts = packet.dts + offsets[i]
            if i in last and dts <= last[i]:
                offsets[i] += last[i] + (packet.duration or steps[i]) - dts
            packet.dts += offsets[i]
            if packet.pts is not None:
                packet.pts += offsets[i]
            last[i] = packet.dts
        yield packet


def _packet_step(stream: av.stream.Stream) -> int:
    """One frame's duration in the stream's time base (a nominal one where the container gives none)."""
    rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None) or 25
    return max(1, round(1 / (Fraction(rate) * Fraction(stream.time_base))))


def frame_pts(frame: av.VideoFrame, previous: int | None, step: int) -> int:
    """The frame's pts, or one nominal frame after the previous one when the container omits it."""
    if frame.pts is not None:
        return frame.pts
    return 0 if previous is None else previous + step


class SceneScanner:
    """Scene cuts, frame times and frame differences of a video stream, fed one decoded frame at a time.

    :func:`scan_video` drives it over a whole file; the one-pass splitter drives it too, encoding
    the frames it is fed into clips, so both find the same cuts.
    """

    def __init__(self, stream: av.video.stream.VideoStream, cfg: SceneConfig, name: str) -> None:
        self.name = name
        self.time_base = Fraction(stream.time_base)
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        self.step = max(1, round(1 / (self.rate * self.time_base)))  # nominal frame duration in pts
        self.start = stream_start(stream)
        self.detector: ContentDetector | AdaptiveDetector | None = None
        self.network = None
        if cfg.detector == "transnetv2":
            from viclip.curation.transnet import TransNetStream  # torch and the optional extra only when asked

            self.network = TransNetStream(cfg.transnet_cut_threshold, cfg.transnet_transition_threshold,
                                          cfg.transnet_device, cfg.transnet_batch)
        elif cfg.detector == "adaptive":
            self.detector = AdaptiveDetector(min_scene_len=float(cfg.min_scene_len))
        else:
            self.detector = _ContentDetector(threshold=cfg.threshold, min_scene_len=float(cfg.min_scene_len))
        self.scaler = VideoReformatter()  # one scaler for the whole video: a per-frame one rebuilds its context
        self.size = (0, 0)
        self.width = self.height = 0
        self.pts: list[int] = []  # relative to ``start``
        self.diffs: list[float] = []
        self.cut_pts: list[int] = []
        self.last_duration = 0
        self._prev_luma: np.ndarray | None = None
        self._tc: FrameTimecode | None = None
        self._detect_size = cfg.detect_size
        self._threads = cfg.threads  # swscale's own threads cost 4x the CPU of one at this size

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def frame_time(self, i: int) -> float:
        return self.pts[i] * float(self.time_base)

    def settled(self, i: int, hold: float) -> bool:
        """Whether frame ``i``'s cuts are final: ``hold`` seconds behind the newest frame for PySceneDetect's
        detectors (they place a cut at most ``min_scene_len`` back), its prediction in for TransNetV2."""
        if self.network is not None:
            return self.network.settled(i)
        return self.frame_time(i) < self.frame_time(self.num_frames - 1) - hold

    def in_gap(self, i: int) -> bool:
        """Whether frame ``i`` (settled) lies in a transition, which no scene includes."""
        return self.network is not None and self.network.in_gap(i)

    def add(self, frame: av.VideoFrame) -> list[int]:
        """Scan the next frame (presentation order); return the indices of the cuts found by it.

        A cut may start at an earlier frame than this one (PySceneDetect merges bursts of cuts
        within ``min_scene_len``), but never at one more than ``min_scene_len`` seconds earlier.
        """
        previous = self.start + self.pts[-1] if self.pts else None
        pts = frame_pts(frame, previous, self.step)
        if not self.pts:
            self.width, self.height = frame.width, frame.height
            self.size = detect_dims(frame.width, frame.height, self._detect_size)
        w, h = self.size
        small = self.scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="FAST_BILINEAR",
                                     threads=self._threads).to_ndarray()
        luma = small[:h]
        self.diffs.append(0.0 if self._prev_luma is None else cv2.norm(luma, self._prev_luma, cv2.NORM_L1) / luma.size)
        self._prev_luma = luma
        self.pts.append(pts - self.start)
        self.last_duration = frame.duration or self.step
        self._tc = FrameTimecode(Timecode(pts=pts - self.start, time_base=self.time_base), fps=self.rate)
        if self.network is not None:
            return self._indices(self.network.add(frame))
        bgr = cv2.cvtColor(small, cv2.COLOR_YUV2BGR_I420)
        return self._cuts(self.detector.process_frame(self._tc, bgr))

    def _indices(self, found: list[int]) -> list[int]:
        self.cut_pts += [self.pts[i] for i in found]
        return found

    def _cuts(self, timecodes: list[FrameTimecode]) -> list[int]:
        found = []
        for tc in timecodes:
            self.cut_pts.append(tc.pts)
            i = bisect.bisect_left(self.pts, tc.pts)  # the list, not an array of it per cut
            if 0 < i < len(self.pts):
                found.append(i)
        return found

    def finish(self) -> VideoScan:
        """The scan of every frame fed so far (cuts the detector holds back until the end included)."""
        if self._tc is None:
            raise SourceError("undecodable", f"{self.name}: no decodable video frames")
        if self.network is not None:
            self._indices(self.network.finish())
        else:
            self._cuts(self.detector.post_process(self._tc))
        gaps = [(a, b) for a, b in self.network.gaps] if self.network is not None else []
        pts_arr = np.asarray(self.pts, dtype=np.int64)
        if np.any(np.diff(pts_arr) <= 0):  # decoders emit presentation order; anything else is broken
            raise SourceError("bad_timestamps", f"{self.name}: frame timestamps are not increasing")
        cuts = sorted({int(np.searchsorted(pts_arr, p)) for p in self.cut_pts} - {0, len(pts_arr)})
        end = float((pts_arr[-1] + self.last_duration) * self.time_base)
        return VideoScan(times=pts_arr * float(self.time_base), diffs=np.asarray(self.diffs, dtype=np.float32),
                         cuts=cuts, end=end, width=self.width, height=self.height, gaps=gaps)


def open_video(container: av.container.InputContainer, name: str, threads: int,
               skip_deblock: bool = False) -> av.video.stream.VideoStream:
    """The first video stream of an open container, set up for decoding with ``threads`` threads."""
    if not container.streams.video:
        raise SourceError("no_video_stream", f"{name}: no video stream")
    stream = container.streams.video[0]
    stream.thread_count = threads
    if skip_deblock:
        stream.codec_context.options = {"skip_loop_filter": "all"}
    return stream


def scan_video(path: str | os.PathLike, cfg: SceneConfig = SceneConfig()) -> VideoScan:
    """Decode ``path`` once: frame times, frame differences and the cuts (and gaps) of ``cfg.detector``.

    Raises :class:`SourceError` or whatever PyAV raises for an unreadable file; callers turn that
    into a failed row.
    """
    with av.open(str(path)) as container:
        stream = open_video(container, str(path), cfg.threads, cfg.skip_deblock)
        scanner = SceneScanner(stream, cfg, str(path))
        for packet in demux_continuous(container, [stream]):
            for frame in packet.decode():
                scanner.add(frame)
    return scanner.finish()
