"""The mp4 writer: H.264 clips for tests, the synthetic demo data and the decoders' self-check."""

from __future__ import annotations

import io

import av
import numpy as np


def write_mp4(
    frames: np.ndarray,
    fps: float = 8.0,
    crf: int = 23,
    gop: int | None = None,
    preset: str = "veryfast",
    tune: str | None = None,
) -> bytes:
    """Encode uint8 frames ``[T, H, W, 3]`` (H, W even) as H.264 in an mp4 and return its bytes.

    ``gop`` is the keyframe interval in frames (default: one keyframe per second), which bounds how
    far a decoder must read after a seek when it samples a few frames from a clip. ``tune`` is x264's
    (``fastdecode`` trades ~20 % more bytes for a third to a half less decoding CPU, see
    bench/data_loader.py).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 expects uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4 needs even height and width for yuv420p, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps) if float(fps).is_integer() else fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "g": str(gop or max(1, round(fps))),
                          **({"tune": tune} if tune else {})}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
