"""Generated source videos with known content, for the curation tests and benchmark.

Nothing is downloaded: scenes come from FFmpeg's lavfi sources (through PyAV) or numpy, so cut
times, still and noisy segments and frame indices are known exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

from viclip.data.video import write_mp4

INDEX_BITS = 12


def lavfi_frames(source: str, seconds: float, width: int, height: int, fps: int) -> np.ndarray:
    """RGB frames ``[T, H, W, 3]`` of an FFmpeg lavfi source, e.g. ``"testsrc2"`` or ``"color=c=red"``."""
    name, _, opts = source.partition("=")
    spec = f"{name}={opts + ':' if opts else ''}size={width}x{height}:rate={fps}"
    with av.open(f"{spec},trim=duration={seconds},format=rgb24", format="lavfi") as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def natural_texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB image with the 1/f amplitude spectrum of natural photographs (smooth, not blocky)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random(amplitude.shape))
        img = np.fft.irfft2(amplitude * phase, s=(height, width))
        channels.append((img - img.mean()) / (img.std() + 1e-9))
    image = np.stack(channels, -1) * 0.3 + 0.7 * channels[0][..., None]  # correlated colours, like photos
    return np.clip(128 + 50 * image, 0, 255).astype(np.uint8)


def pan_frames(n: int, width: int, height: int, speed: float, seed: int = 0) -> np.ndarray:
    """A camera pan over a natural-statistics texture at ``speed`` pixels per frame: ordinary motion."""
    texture = natural_texture(int(np.ceil(speed * n)) + width + 1, height, seed)
    return np.stack([texture[:, round(i * speed): round(i * speed) + width] for i in range(n)])


def noise_frames(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Independent uniform noise per frame (TV static): the extreme-dynamics case."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def strobe_frames(n: int, width: int, height: int, period: int = 2) -> np.ndarray:
    """Black frames with a white flash every ``period`` frames."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    frames[::period] = 255
    return frames


def slideshow_frames(n: int, width: int, height: int, hold: int, seed: int = 0) -> np.ndarray:
    """Still pictures, each held for ``hold`` frames (a photo gallery)."""
    pics = [natural_texture(width, height, seed + i) for i in range(n // hold + 1)]
    return np.stack([pics[i // hold] for i in range(n)])


def index_frames(n: int, width: int, height: int, offset: int = 0) -> np.ndarray:
    """Frames that carry their own index as black/white blocks, readable after lossy coding."""
    idx = np.arange(offset, offset + n)
    bits = (idx[:, None] >> np.arange(INDEX_BITS)[None]) & 1  # [n, bits]
    cols = width // INDEX_BITS
    frames = np.full((n, height, width, 3), 128, dtype=np.uint8)
    for b in range(INDEX_BITS):
        frames[:, :, b * cols:(b + 1) * cols] = (bits[:, b] * 255)[:, None, None, None]
    return frames


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frames` for one decoded RGB frame."""
    cols = frame.shape[1] // INDEX_BITS
    h = frame.shape[0]
    value = 0
    for b in range(INDEX_BITS):
        block = frame[h // 4: 3 * h // 4, b * cols + cols // 4: (b + 1) * cols - cols // 4]
        value |= int(block.mean() > 128) << b
    return value


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, gop: int | None = None) -> None:
    """Write a constant-frame-rate H.264 mp4 (the shared encoder) to ``path``."""
    with open(path, "wb") as f:
        f.write(write_mp4(frames, fps=fps, gop=gop, crf=18))


def write_scenes(path: str | os.PathLike, scenes: Iterable[np.ndarray], fps: int = 30, crf: int = 23) -> None:
    """Encode scenes one after another as a single H.264 mp4 without holding the whole video in memory."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = None
        for frames in scenes:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(fps)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def write_vfr_video(path: str | os.PathLike, frames: np.ndarray, times: np.ndarray, time_base: int = 1000) -> None:
    """Write an H.264 mp4 whose frames sit at the given presentation ``times`` (seconds): true VFR."""
    tb = Fraction(1, time_base)
    pts = np.round(np.asarray(times) * time_base).astype(int)
    if np.any(np.diff(pts) <= 0):
        raise ValueError("write_vfr_video needs strictly increasing times")
    with av.open(str(path), mode="w", format="mp4") as container:
        avg = Fraction(len(frames), max(1, int(pts[-1] - pts[0]))) * time_base
        stream = container.add_stream("libx264", rate=avg.limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = tb
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = int(p), tb
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
