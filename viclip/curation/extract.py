"""Cut time spans out of a source video as standalone mp4 clips, streaming (never the whole video in memory).

Re-encoding (the default) decodes the source once, in file order, from the first span to the last,
scales each frame to the target short side (square pixels, upright as players show it) and feeds
it to one H.264 encoder per open span, keeping the source presentation timestamps so
variable-frame-rate clips stay true to time. Gaps between spans are skipped without decoding and
without seeking (:class:`ForwardReader`). Stream copy (``copy=True``) is the fast option: it copies
whole closed GOPs, so a clip starts at the first keyframe inside its span and ends at the last
keyframe inside it; the actual times are returned.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from viclip.curation.scenes import demux_continuous, open_video, stream_start

MAX_HELD_BYTES = 64 << 20  # packets held while skipping a gap; past this the reader decodes on instead


@dataclass(frozen=True)
class ExtractConfig:
    """Clip encoding options.

    The defaults store clips for training, as chosen by ``bench/data_loader.py``: short side 256 (the
    train crop is 224), at most 4 fps (8 sampled frames of a 10 s clip choose from 40), every frame
    a keyframe (a sampled frame decodes alone: half the CPU of a 1 s keyframe interval) and x264's
    ``fastdecode`` tune (no CABAC, no deblocking: a third less decoding CPU again, for ~20 % more
    bytes). Measured on 10 s clips: 3x the bytes of the same clip at 24 fps with a 2 s keyframe
    interval, and a sixth of its CPU to decode 8 frames. ``fps=0`` keeps the source frame rate,
    ``keyframe_interval`` (seconds, capped at an eighth of the clip) spaces keyframes instead,
    ``tune=""`` is x264's default: use them for clips meant for viewing or generation (e.g.
    ``short_side=720``). Frames dropped for ``fps`` are the ones between slots of ``1/fps`` s from
    the clip's first frame; the rest keep their source timestamps. Stream copy (``copy=True``)
    ignores every encoding option.
    """

    short_side: int = 256
    fps: float = 4.0
    keyframe_interval: float = 0.0
    tune: str = "fastdecode"
    crf: int = 23
    preset: str = "veryfast"
    audio: bool = False
    copy: bool = False
    threads: int = 1  # decoder and encoder threads per worker process (one process per core)

    def __post_init__(self) -> None:
        if self.short_side < 16 or self.keyframe_interval < 0 or self.fps < 0:
            raise ValueError(f"invalid ExtractConfig: {self} (need short_side >= 16, fps >= 0, "
                             "keyframe_interval >= 0)")
        if self.copy and self.audio:
            raise ValueError("ExtractConfig: audio is only supported when re-encoding (copy=False)")


@dataclass
class ExtractedClip:
    """One encoded clip and the span it actually covers (seconds from the source's first frame)."""

    mp4: bytes
    start: float
    end: float
    frames: int
    width: int
    height: int


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Even size with the given short side (never upscaled), keeping the aspect ratio."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


@dataclass(frozen=True)
class ClipGeometry:
    """How a source's decoded frames become clip frames: as players show them, in square pixels.

    ``scaled`` is the size decoded frames are scaled to (still in coded orientation), ``turns`` the
    counterclockwise quarter turns of the source's display matrix (a phone held upright stores
    landscape pictures and a 90-degree matrix).
    """

    scaled: tuple[int, int]
    turns: int

    @property
    def size(self) -> tuple[int, int]:
        return self.scaled[::-1] if self.turns % 2 else self.scaled

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream, frame: av.VideoFrame, short_side: int) -> ClipGeometry:
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        width = frame.width * float(sar) if sar and sar > 0 else frame.width  # display width of the coded height
        return cls(output_size(max(1, round(width)), frame.height, short_side), round(frame.rotation / 90) % 4)


def extract_clips(path: str | os.PathLike, spans: Sequence[tuple[float, float]],
                  cfg: ExtractConfig = ExtractConfig()) -> list[ExtractedClip | None]:
    """Encode every ``(start, end)`` span of ``path``; ``None`` where a span holds no (whole-GOP) frames.

    A frame belongs to a span when ``start <= time < end``. Spans may overlap and come in any order.
    """
    if cfg.copy:
        return [_copy_span(path, s, e, cfg) for s, e in spans]
    return _reencode(path, spans, cfg)


class ForwardReader:
    """Decoded frames of a container in file order; a gap is skipped by reading on, never by seeking.

    After ``skip_to(pts)`` packets are demuxed but not decoded, and those since the last video
    keyframe at or before ``pts`` are held; decoding resumes from that keyframe once a video packet
    at or after ``pts`` arrives (or goes on through the held packets when no such keyframe came:
    the target lies in the GOP being decoded). Every packet is read once, so no source can send the
    reader back to where it has been. (A seek to the keyframe before the next clip lands before
    the position already reached when keyframes are farther apart than the gap, and the seek-based
    extractor this replaces repeated that seek forever.) Reading a gap's bytes costs far less than
    decoding them; what is held stays under ``MAX_HELD_BYTES``.
    """

    def __init__(self, container: av.container.InputContainer, video: av.video.stream.VideoStream,
                 audio: av.audio.stream.AudioStream | None = None) -> None:
        self.container, self.video = container, video
        self.streams = [s for s in (video, audio) if s is not None]
        self.target: int | None = None
        self.held: list[av.Packet] = []
        self.held_bytes = 0
        self.continuous = True  # the held packets continue what the decoders were fed

    def skip_to(self, pts: int) -> None:
        """Decode nothing more until the video stream reaches ``pts`` (absolute, in its time base)."""
        self.target, self.held, self.held_bytes, self.continuous = pts, [], 0, True

    def __iter__(self) -> Iterator[av.VideoFrame | av.AudioFrame]:
        for packet in demux_continuous(self.container, self.streams):
            if self.target is None:
                yield from packet.decode()
            elif self._hold(packet):
                if not self.continuous:
                    for stream in self.streams:
                        stream.codec_context.flush_buffers()  # what they hold lies before the keyframe
                held, self.target, self.held = self.held, None, []
                for p in held:
                    yield from p.decode()

    def _hold(self, packet: av.Packet) -> bool:
        """Hold ``packet`` while skipping; True when decoding must resume with the held packets."""
        video = packet.stream.index == self.video.index
        pts = packet.pts if packet.pts is not None else packet.dts
        if video and packet.is_keyframe and pts is not None and pts <= self.target:
            self.held, self.held_bytes, self.continuous = [], 0, False
        self.held.append(packet)
        self.held_bytes += packet.size
        return (video and pts is not None and pts >= self.target) or self.held_bytes > MAX_HELD_BYTES


class ClipEncoder:
    """An mp4 in memory with one H.264 stream (and AAC when the source has audio and it is wanted).

    With ``keyframe_interval`` set, keyframes are spaced at most an eighth of the clip apart, so a
    clip of unknown ``duration`` (the one-pass splitter does not know where its scene ends) holds
    its scaled frames until it is 8 intervals long or closed; without it nothing waits.
    """

    def __init__(self, src: av.video.stream.VideoStream, geometry: ClipGeometry, duration: float | None,
                 cfg: ExtractConfig, audio: av.audio.stream.AudioStream | None) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        rate = Fraction(src.average_rate or src.guessed_rate or 25).limit_denominator(1001)
        self.fps = Fraction(cfg.fps).limit_denominator(1001) if cfg.fps else None
        self.rate = min(rate, self.fps) if self.fps else rate
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.geometry = geometry
        self.size = geometry.size
        self.stream.width, self.stream.height, self.stream.pix_fmt = *self.size, "yuv420p"
        self.time_base = Fraction(src.time_base)
        self.stream.codec_context.time_base = self.time_base  # source pts pass through: VFR stays VFR
        self.stream.codec_context.thread_count = cfg.threads
        self.cfg = cfg
        self.held: list[av.VideoFrame] | None = None  # frames waiting for the keyframe spacing
        if cfg.keyframe_interval and duration is None:
            self.held = []
        else:
            self._set_gop(duration or 0.0)
        self.audio = None
        if audio is not None:
            self.audio = self.container.add_stream("aac", rate=audio.codec_context.sample_rate)
            self.audio.layout = audio.codec_context.layout
        self.scaler = VideoReformatter()  # reused across frames: building a scaler per frame costs more
        self.turner = VideoReformatter() if geometry.turns else None
        self.first_pts: int | None = None
        self.first_time = self.last_end = 0.0
        self.frames = 0

    def _set_gop(self, duration: float) -> None:
        gop = max(1, round(float(self.rate) * min(self.cfg.keyframe_interval, duration / 8)))
        # no macroblock-tree rate control: with P/B frames (a keyframe interval) the libx264 that PyAV 18 bundles
        # reads uninitialised memory in it on narrow clips (valgrind: at 106 and 112 px wide, not at 160-320; not
        # with its asm off), so the same frames encoded twice came out different
        self.stream.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset, "g": str(gop), "mbtree": "0",
                               **({"tune": self.cfg.tune} if self.cfg.tune else {})}

    def _scale(self, frame: av.VideoFrame) -> av.VideoFrame:
        w, h = self.geometry.scaled
        threads = self.cfg.threads
        if not self.geometry.turns:
            return self.scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="BICUBIC",
                                        threads=threads)
        rgb = self.scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation="BICUBIC",
                                   threads=threads).to_ndarray()
        upright = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, self.geometry.turns)), format="rgb24")
        return self.turner.reformat(upright, format="yuv420p", threads=threads)

    def add_video(self, frame: av.VideoFrame, pts: int, time: float, end: float) -> None:
        if self.first_pts is None:
            self.first_pts, self.first_time = pts, time
        self.last_end = end  # a dropped frame still belongs to the span the clip covers
        if self.fps and (pts - self.first_pts) * self.time_base * self.fps < self.frames:
            return  # the slot of the next kept frame (frames / fps seconds in) is not reached yet
        out = self._scale(frame)
        out.pts, out.time_base = pts - self.first_pts, self.stream.codec_context.time_base
        # the scaler copies the source's picture type, which libx264 would force on the clip (a source I frame
        # becomes a keyframe, a B frame a B frame: the clip's GOPs were the source's, whatever keyframe_interval
        # said); x264 picks the types itself
        out.pict_type = PictureType.NONE
        self.frames += 1
        if self.held is not None:
            self.held.append(out)
            if time - self.first_time >= 8 * self.cfg.keyframe_interval:  # the spacing is the interval now
                self._release(time - self.first_time)
            return
        self._encode(out)

    def _release(self, duration: float) -> None:
        self._set_gop(duration)
        held, self.held = self.held or [], None
        for out in held:
            self._encode(out)

    def _encode(self, out: av.VideoFrame | None) -> None:
        for packet in self.stream.encode(out):
            self.container.mux(packet)

    def add_audio(self, frame: av.AudioFrame) -> None:
        if self.audio is None or self.first_pts is None:  # audio starts with the clip's first picture
            return
        frame.pts = None  # the encoder counts samples from the clip start
        for packet in self.audio.encode(frame):
            self.container.mux(packet)

    def close(self) -> ExtractedClip | None:
        if self.held is not None:
            self._release(self.last_end - self.first_time)
        if self.frames:
            self._encode(None)
            if self.audio is not None:
                for packet in self.audio.encode():
                    self.container.mux(packet)
        self.container.close()
        if not self.frames:
            return None
        return ExtractedClip(self.buf.getvalue(), self.first_time, self.last_end, self.frames, *self.size)

    def discard(self) -> None:
        """Drop the clip (a scene the filters did not keep): close its muxer without draining the encoder."""
        self.held = None
        self.container.close()


def _reencode(path: str | os.PathLike, spans: Sequence[tuple[float, float]],
              cfg: ExtractConfig) -> list[ExtractedClip | None]:
    results: list[ExtractedClip | None] = [None] * len(spans)
    if not spans:
        return results
    with av.open(str(path)) as container:
        vstream = open_video(container, str(path), cfg.threads)
        astream = container.streams.audio[0] if cfg.audio and container.streams.audio else None
        tb = Fraction(vstream.time_base)
        zero = stream_start(vstream)
        nominal = round(1 / (float(vstream.average_rate or vstream.guessed_rate or 25) * tb))
        # compare integer pts (relative to the first frame), never float seconds: span ends taken from
        # a scan must fall exactly on the frame that starts the next scene
        bounds = [(round(s / tb), round(e / tb)) for s, e in spans]
        pending = deque(sorted(range(len(spans)), key=lambda i: bounds[i][0]))
        active: dict[int, ClipEncoder] = {}
        geometry: ClipGeometry | None = None
        reader = ForwardReader(container, vstream, astream)
        reader.skip_to(zero + bounds[pending[0]][0])
        for frame in reader:
            if frame.pts is None:
                continue
            if isinstance(frame, av.AudioFrame):
                p = round((frame.pts - (astream.start_time or 0)) * Fraction(frame.time_base) / tb)
                for i, enc in active.items():
                    if bounds[i][0] <= p < bounds[i][1]:
                        enc.add_audio(frame)
                continue
            p = frame.pts - zero
            for i in [i for i in active if p >= bounds[i][1]]:
                enc = active.pop(i)
                enc.last_end = float(p * tb)  # a clip ends where the next frame begins (VFR-exact)
                results[i] = enc.close()
            while pending and bounds[pending[0]][0] <= p:
                i = pending.popleft()
                if p < bounds[i][1]:
                    geometry = geometry or ClipGeometry.of(vstream, frame, cfg.short_side)
                    active[i] = ClipEncoder(vstream, geometry, spans[i][1] - spans[i][0], cfg, astream)
            for enc in active.values():
                enc.add_video(frame, p, float(p * tb), float((p + (frame.duration or nominal)) * tb))
            if not active:
                if not pending:
                    break
                reader.skip_to(zero + bounds[pending[0]][0])
        for i, enc in active.items():
            results[i] = enc.close()
    return results


def _copy_span(path: str | os.PathLike, start: float, end: float, cfg: ExtractConfig) -> ExtractedClip | None:
    """Copy the whole closed GOPs that lie inside ``[start, end)`` without decoding."""
    with av.open(str(path)) as container:
        src = container.streams.video[0]
        tb = Fraction(src.time_base)
        zero = stream_start(src)
        start_pts, end_pts = zero + round(start / tb), zero + round(end / tb)
        container.seek(max(zero, start_pts - round(1.0 / tb)), stream=src, backward=True)
        gops: list[list[av.Packet]] = []
        gop: list[av.Packet] = []
        clip_end_pts = None
        for packet in container.demux(src):
            if packet.pts is None:  # the demuxer's end-of-stream marker
                continue
            if packet.is_keyframe:
                if gop and packet.pts <= end_pts:
                    gops.append(gop)
                    clip_end_pts = packet.pts
                gop = []
                if packet.pts >= end_pts:
                    break
                if packet.pts >= start_pts:
                    gop = [packet]
            elif gop and packet.pts >= gop[0].pts:  # leading pictures of an open GOP are left out
                gop.append(packet)
        else:
            if gop:  # the last GOP runs to the end of the file
                gops.append(gop)
                last = max(gop, key=lambda p: p.pts)
                clip_end_pts = last.pts + (last.duration or 0)
        if not gops:
            return None
        base = gops[0][0].pts
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as out:
            stream = out.add_stream_from_template(src)
            frames = 0
            for packet in (p for g in gops for p in g):
                packet.pts -= base
                packet.dts = None if packet.dts is None else packet.dts - base
                packet.stream = stream
                out.mux(packet)
                frames += 1
        return ExtractedClip(buf.getvalue(), float((base - zero) * tb), float((clip_end_pts - zero) * tb),
                             frames, src.codec_context.width, src.codec_context.height)
