"""Cut time spans out of a source video as standalone mp4 clips, streaming (never the whole video in memory).

Re-encoding (the default) decodes the source once from the first span to the last (seeking over
long gaps), scales each frame to the target short side and feeds it to one H.264 encoder per open
span, keeping the source presentation timestamps so variable-frame-rate clips stay true to time.
Stream copy (``copy=True``) is the fast option: it copies whole closed GOPs, so a clip starts at the
first keyframe inside its span and ends at the last keyframe inside it; the actual times are
returned.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter

from viclip.curation.scenes import stream_start

SEEK_GAP = 5.0  # seconds: decoding through a shorter gap is cheaper than a seek to the next keyframe


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


def extract_clips(path: str | os.PathLike, spans: Sequence[tuple[float, float]],
                  cfg: ExtractConfig = ExtractConfig()) -> list[ExtractedClip | None]:
    """Encode every ``(start, end)`` span of ``path``; ``None`` where a span holds no (whole-GOP) frames.

    A frame belongs to a span when ``start <= time < end``. Spans may overlap and come in any order.
    """
    if cfg.copy:
        return [_copy_span(path, s, e, cfg) for s, e in spans]
    return _reencode(path, spans, cfg)


class _ClipEncoder:
    """An mp4 in memory with one H.264 stream (and AAC when the source has audio and it is wanted)."""

    def __init__(self, src: av.video.stream.VideoStream, size: tuple[int, int], duration: float,
                 cfg: ExtractConfig, audio: av.audio.stream.AudioStream | None) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        rate = Fraction(src.average_rate or src.guessed_rate or 25).limit_denominator(1001)
        self.fps = Fraction(cfg.fps).limit_denominator(1001) if cfg.fps else None
        rate = min(rate, self.fps) if self.fps else rate
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = size[0], size[1], "yuv420p"
        self.time_base = Fraction(src.time_base)
        self.stream.codec_context.time_base = self.time_base  # source pts pass through: VFR stays VFR
        gop = max(1, round(float(rate) * min(cfg.keyframe_interval, duration / 8)))
        self.stream.options = {"crf": str(cfg.crf), "preset": cfg.preset, "g": str(gop),
                               **({"tune": cfg.tune} if cfg.tune else {})}
        self.stream.codec_context.thread_count = cfg.threads
        self.audio = None
        if audio is not None:
            self.audio = self.container.add_stream("aac", rate=audio.codec_context.sample_rate)
            self.audio.layout = audio.codec_context.layout
        self.size = size
        self.scaler = VideoReformatter()  # reused across frames: building a scaler per frame costs more
        self.threads = cfg.threads
        self.first_pts: int | None = None
        self.first_time = self.last_end = 0.0
        self.frames = 0

    def add_video(self, frame: av.VideoFrame, pts: int, time: float, end: float) -> None:
        if self.first_pts is None:
            self.first_pts, self.first_time = pts, time
        self.last_end = end  # a dropped frame still belongs to the span the clip covers
        if self.fps and (pts - self.first_pts) * self.time_base * self.fps < self.frames:
            return  # the slot of the next kept frame (frames / fps seconds in) is not reached yet
        out = self.scaler.reformat(frame, width=self.size[0], height=self.size[1], format="yuv420p",
                                   interpolation="BICUBIC", threads=self.threads)
        out.pts, out.time_base = pts - self.first_pts, self.stream.codec_context.time_base
        for packet in self.stream.encode(out):
            self.container.mux(packet)
        self.frames += 1

    def add_audio(self, frame: av.AudioFrame) -> None:
        if self.audio is None or self.first_pts is None:  # audio starts with the clip's first picture
            return
        frame.pts = None  # the encoder counts samples from the clip start
        for packet in self.audio.encode(frame):
            self.container.mux(packet)

    def close(self) -> ExtractedClip | None:
        for stream in (self.stream, self.audio):
            if stream is not None and self.frames:
                for packet in stream.encode():
                    self.container.mux(packet)
        self.container.close()
        if not self.frames:
            return None
        return ExtractedClip(self.buf.getvalue(), self.first_time, self.last_end, self.frames, *self.size)


def _reencode(path: str | os.PathLike, spans: Sequence[tuple[float, float]],
              cfg: ExtractConfig) -> list[ExtractedClip | None]:
    results: list[ExtractedClip | None] = [None] * len(spans)
    if not spans:
        return results
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        vstream.thread_count = cfg.threads
        astream = container.streams.audio[0] if cfg.audio and container.streams.audio else None
        streams = [s for s in (vstream, astream) if s is not None]
        tb = Fraction(vstream.time_base)
        zero = stream_start(vstream)
        nominal = round(1 / (float(vstream.average_rate or vstream.guessed_rate or 25) * tb))
        size = output_size(vstream.codec_context.width, vstream.codec_context.height, cfg.short_side)
        # compare integer pts (relative to the first frame), never float seconds: span ends taken from
        # a scan must fall exactly on the frame that starts the next scene
        bounds = [(round(s / tb), round(e / tb)) for s, e in spans]
        pending = deque(sorted(range(len(spans)), key=lambda i: bounds[i][0]))
        active: dict[int, _ClipEncoder] = {}

        def decode_from(target: int) -> int | None:
            """Decode from a seek before ``target``; return the next seek target, or None when done."""
            container.seek(zero + max(0, target - round(1 / tb)), stream=vstream, backward=True)
            for packet in container.demux(*streams):
                for frame in packet.decode():
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
                            active[i] = _ClipEncoder(vstream, size, spans[i][1] - spans[i][0], cfg, astream)
                    for enc in active.values():
                        enc.add_video(frame, p, float(p * tb), float((p + (frame.duration or nominal)) * tb))
                    if not active and not pending:
                        return None
                    if not active and (bounds[pending[0]][0] - p) * tb > SEEK_GAP:
                        return bounds[pending[0]][0]
            return None  # end of file

        target = bounds[pending[0]][0]
        while target is not None:
            target = decode_from(target)
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
