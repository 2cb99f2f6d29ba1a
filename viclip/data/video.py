"""Video decoding: the official frame sampling and the decoder backends (the mp4 writer is in :mod:`.encode`).

``read_video`` hides the decoder (decord, PyAV, torchcodec on the CPU or on the GPU's NVDEC) behind
one call so a config field switches it; every backend decodes only the sampled frames and accepts
bytes from a tar member. :func:`decode_plan` is where a loader learns whether GPU decoding can run.
"""

from __future__ import annotations

import bisect
import functools
import io
import logging
import math
import os
import threading

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from viclip.data.encode import write_mp4
from viclip.data.formats import MAX_PIXELS, VideoDecodeError
from viclip.errors import ConfigError

log = logging.getLogger(__name__)

# File suffixes a folder of videos is listed by (curation sources, embeddings, viclip_score).
class _NotAVideo(ValueError):
    """FFmpeg cannot open the input as a video: no other decoder is tried (decord would print its bytes)."""


BACKENDS = ("decord", "pyav", "torchcodec", "torchcodec_cuda")
GPU_BACKEND = "torchcodec_cuda"
SAMPLINGS = {"middle": "middle", "random": "random", "rand": "random"}  # accepted name -> rule


def sample_indices(
    num_video_frames: int,
    num_frames: int,
    sampling: str = "middle",
    rng: np.random.Generator | int | None = None,
) -> list[int]:
    """Frame indices by the official ViCLIP rule (``get_frame_indices`` in the released code).

    The range ``[0, num_video_frames)`` is split at ``np.linspace(0, n, k + 1).astype(int)`` into
    ``k = min(num_frames, n)`` segments ``[a, b)``. ``middle`` (evaluation) takes ``(a + b - 1) // 2``;
    ``random`` (training; ``rand`` is accepted too) draws from ``[a, b - 2]``: the release draws from
    ``range(a, b - 1)``, so the last frame of each segment is never chosen, and when any segment
    holds a single frame it falls back to ``k`` distinct sorted frames drawn from the whole video.
    We keep these quirks so training sees the same frame distribution as the released models.
    Videos shorter than ``num_frames`` repeat the last index.
    """
    mode = SAMPLINGS.get(sampling)
    if mode is None:
        raise ValueError(f"sampling must be 'middle' or 'random', got {sampling!r}")
    if num_video_frames < 1:
        raise ValueError(f"cannot sample frames from a video with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    k = min(num_frames, num_video_frames)
    edges = np.linspace(0, num_video_frames, k + 1).astype(int)
    starts, ends = edges[:-1], edges[1:] - 1  # inclusive segment ends, as in the release
    if mode == "middle":
        indices = ((starts + ends) // 2).tolist()
    else:
        rng = np.random.default_rng(rng)
        if np.all(ends > starts):
            indices = [int(rng.integers(a, b)) for a, b in zip(starts, ends)]
        else:
            indices = sorted(rng.permutation(num_video_frames)[:k].tolist())
    return indices + [indices[-1]] * (num_frames - k)


def _source(path_or_bytes: str | os.PathLike | bytes) -> tuple[str | io.BytesIO, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(path_or_bytes)), f"<{len(path_or_bytes)} bytes>"
    path = os.fspath(path_or_bytes)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    return path, path


def _target_size(height: int, width: int, size: int | tuple[int, int] | None,
                 max_pixels: int | None = None) -> tuple[int, int] | None:
    """``size`` as (H, W): an int is the short side (aspect ratio kept), a pair is exact; then scaled
    down (aspect kept) to at most ``max_pixels``. None: the stored size, within the limit."""
    if isinstance(size, int):
        scale = size / min(height, width)
        hw = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        hw = (int(size[0]), int(size[1])) if size is not None else (height, width)
    if max_pixels and hw[0] * hw[1] > max_pixels:
        scale = math.sqrt(max_pixels / (hw[0] * hw[1]))
        return max(1, int(hw[0] * scale)), max(1, int(hw[1] * scale))
    return None if size is None else hw


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's swscale context: ``frame.to_ndarray`` builds one per frame, which costs ~4x the
    conversion itself (~0.5 ms per 256p frame); one reused context rebuilds only when sizes change.
    Callers pass ``threads=1``: a context with its own thread pool would deadlock in a forked worker."""
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


# skip_frame for a packet whose frame is not sampled: FFmpeg drops it undecoded when its header says
# no other picture references it and decodes it as usual when one does, so every reference stays
# intact. Only codecs whose mark is exact get it: H.264's nal_ref_idc. HEVC's sub-layer non-reference
# NAL types may still be referenced from a higher temporal sub-layer, which FFmpeg's check ignores,
# so HEVC and the rest decode every packet of a run.
_SKIP_UNSAMPLED = "NONREF"
_SKIP_NONREF_CODECS = frozenset({"h264"})


def _decode_pts(ctx, packets: list, wanted: set[int], fmt: dict, out: dict[int, np.ndarray], skip: str) -> int:
    """Feed ``packets`` (decode order, from a keyframe) to a flushed decoder and keep the frames whose
    pts is wanted; returns how many pictures the decoder reconstructed.

    A packet whose frame is not wanted goes in with ``skip_frame=skip`` (``_SKIP_UNSAMPLED`` or
    ``"DEFAULT"``), a wanted one with ``"DEFAULT"``. Feeding stops at the last wanted packet; the
    drain (``None``) then releases the frames the decoder holds back for reordering.
    """
    ctx.flush_buffers()
    need = wanted - out.keys()
    last = max((k for k, p in enumerate(packets) if p.pts in need), default=-1)
    reformatter = _reformatter()
    decoded = 0
    for packet in [*packets[:last + 1], None]:
        if packet is not None:
            ctx.skip_frame = skip if packet.pts not in need else "DEFAULT"
        for frame in ctx.decode(packet):
            decoded += 1
            if frame.pts in need:
                out[frame.pts] = reformatter.reformat(frame, threads=1, **fmt).to_ndarray()
                need.discard(frame.pts)
    ctx.skip_frame = "DEFAULT"
    return decoded


def _decode_runs(packets: list, wanted: set[int]) -> list[tuple[int, int]]:
    """Packet ranges ``[start, stop)`` (decode order) that decode every wanted pts, each from a keyframe.

    A run starts at the last keyframe before the wanted packet whose pts is not later than the
    wanted one: a frame shown before that keyframe (an open GOP's leading picture) references the
    previous group, so its run starts a group earlier. Runs that overlap are merged (one pass, no flush).
    """
    keys = [k for k, p in enumerate(packets) if p.is_keyframe]
    runs: list[tuple[int, int]] = []
    for k, packet in enumerate(packets):
        if packet.pts not in wanted:
            continue
        j = bisect.bisect_right(keys, k) - 1
        while j >= 0 and packets[keys[j]].pts > packet.pts:
            j -= 1
        runs.append((keys[j] if j >= 0 else 0, k + 1))
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(runs):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


# FFmpeg's stream probe would decode the first picture and read up to 5 s of packets (~2 ms per
# 256p clip, a tenth of the cost of 8 frames); the headers of mp4, mkv, webm, avi, MPEG-TS/PS
# already give what the reader needs (tests/test_data_video.py). This skip_frame reaches only the
# probing decoder: the one that decodes the sampled frames sets its own per packet (_decode_pts).
_FAST_PROBE = {"skip_frame": "all", "probesize": "32", "analyzeduration": "0"}


def _first_seconds(n: int, fps: float, max_seconds: float | None) -> int:
    """The frames of ``n`` within the first ``max_seconds`` (UMT's DiDeMo ``trimmed30``: int(30 x fps))."""
    return max(1, min(n, int(max_seconds * float(fps)))) if max_seconds and fps else n


def _pyav_decode(src, num_frames: int, sampling: str, size, rng,
                 max_pixels: int | None = MAX_PIXELS, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """The sampled frames and how many pictures were decoded to get them (tests/test_data_decode_skip.py).

    Demux once; frame numbers come from the packet timestamps (sorted: display order), so nothing
    is decoded to count frames. Each run of packets that holds sampled frames (:func:`_decode_runs`)
    is decoded from its keyframe with the packets already in memory, which costs less than seeking
    the container, skipping the non-reference pictures between sampled frames and stopping at the
    last one. Should the decoder still hold a frame back, the stream is decoded from its start.
    """
    try:
        container = av.open(src, options=_FAST_PROBE)
    except av.error.InvalidDataError as e:
        raise _NotAVideo(f"not a video ({e})") from None
    with container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1  # parallelism comes from loader workers; codec threads cost CPU here
        packets = [p for p in container.demux(stream) if p.pts is not None]
        if not packets:
            raise ValueError("no video frames")
        pts = sorted(p.pts for p in packets)
        if max_seconds:  # the frames shown before max_seconds, by their timestamps
            pts = [p for p in pts if (p - pts[0]) * stream.time_base < max_seconds] or pts[:1]
        indices = sample_indices(len(pts), num_frames, sampling, rng)
        hw = _target_size(stream.height, stream.width, size, max_pixels)
        fmt = {"format": "rgb24"} if hw is None else {
            "format": "rgb24", "height": hw[0], "width": hw[1], "interpolation": "BICUBIC"}
        skip = _SKIP_UNSAMPLED if ctx.name in _SKIP_NONREF_CODECS else "DEFAULT"
        wanted = {pts[i] for i in indices}
        frames: dict[int, np.ndarray] = {}
        decoded = sum(_decode_pts(ctx, packets[start:stop], wanted, fmt, frames, skip)
                      for start, stop in _decode_runs(packets, wanted))
        missing = wanted - frames.keys()
        if missing:
            decoded += _decode_pts(ctx, packets, missing, fmt, frames, skip)
        if len(frames) < len(wanted):
            lost = sorted(wanted - frames.keys())[:3]
            raise ValueError(f"frames at pts {lost} never came out of the decoder")
        return np.stack([frames[pts[i]] for i in indices]), decoded


def _read_pyav(src, num_frames: int, sampling: str, size, rng, max_pixels: int | None, max_seconds=None) -> np.ndarray:
    return _pyav_decode(src, num_frames, sampling, size, rng, max_pixels, max_seconds)[0]


def _read_decord(src, num_frames: int, sampling: str, size, rng, max_pixels, max_seconds=None) -> np.ndarray:
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg's log lines, one per bad input otherwise
    with av.open(src) as container:  # the stored size, from the header only
        stream = container.streams.video[0]
        height, width = _target_size(stream.height, stream.width, size, max_pixels) or (-1, -1)
    if isinstance(src, io.BytesIO):
        src.seek(0)
    reader = decord.VideoReader(src, width=width, height=height, num_threads=1)
    n = len(reader)
    if n < 1:
        raise ValueError("no video frames")
    n = _first_seconds(n, reader.get_avg_fps(), max_seconds)
    return reader.get_batch(sample_indices(n, num_frames, sampling, rng)).asnumpy()


def _read_torchcodec(src, num_frames: int, sampling: str, size, rng, max_pixels: int | None,
                     max_seconds: float | None = None, device: str = "cpu") -> torch.Tensor:
    """torchcodec's decoder on the CPU, or with ``device='cuda'`` on this process's GPU (NVDEC): the
    frames, and the resize, stay on that device. It decodes at the stored size, so frames above
    ``max_pixels`` are refused (PyAV scales them down in the decoder)."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as e:  # optional extra: pip install 'viclip[gpu]' (needs FFmpeg libraries)
        raise ImportError("backend='torchcodec' needs the torchcodec package: "
                          "pip install 'viclip[gpu]'") from e
    source = src.getvalue() if isinstance(src, io.BytesIO) else src
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"  # the rank's GPU (viclip.distributed sets it)
    decoder = VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact", device=device)
    n, height, width = decoder.metadata.num_frames, decoder.metadata.height, decoder.metadata.width
    if not n:
        raise ValueError("no video frames")
    if max_pixels and height * width > max_pixels:
        raise ValueError(f"frames of {width}x{height} exceed max_pixels={max_pixels}; backend=pyav scales them down")
    n = _first_seconds(n, decoder.metadata.average_fps, max_seconds)
    frames = decoder.get_frames_at(indices=sample_indices(n, num_frames, sampling, rng)).data
    hw = _target_size(frames.shape[1], frames.shape[2], size)
    if hw is not None and hw != tuple(frames.shape[1:3]):
        resized = torch.nn.functional.interpolate(
            frames.permute(0, 3, 1, 2).float(), size=hw, mode="bicubic", antialias=True, align_corners=False)
        frames = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return frames


_READERS = {"pyav": _read_pyav, "decord": _read_decord, "torchcodec": _read_torchcodec,
            GPU_BACKEND: functools.partial(_read_torchcodec, device="cuda")}


@functools.lru_cache(maxsize=1)
def _gpu_decoding_problem() -> str | None:
    """Why NVDEC decoding cannot run in this process (None when it can): decodes a generated clip on
    the GPU, the whole path a loader will take, once per process."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError when FFmpeg's libraries do not load
        return f"torchcodec does not load ({type(e).__name__}: {e})"
    probe = write_mp4(np.full((4, 128, 128, 3), 128, np.uint8), fps=4)
    try:
        decoder = VideoDecoder(probe, device=f"cuda:{torch.cuda.current_device()}")
        decoder.get_frames_at(indices=[0])
    except Exception as e:  # noqa: BLE001 - a CPU-only torchcodec build or a driver without NVDEC raise RuntimeError
        return f"torchcodec cannot decode on the GPU ({type(e).__name__}: {str(e).splitlines()[0]})"
    if decoder.cpu_fallback:  # torchcodec would decode on the CPU and copy: say so instead of pretending
        return f"torchcodec falls back to the CPU ({decoder.cpu_fallback})"
    return None


def decode_plan(backend: str, num_workers: int, pin_memory: bool) -> tuple[str, int, bool]:
    """``(backend, DataLoader workers, pin_memory)`` for a loader configured with these.

    ``torchcodec_cuda`` decodes in the main process (a forked worker cannot use CUDA once the
    trainer has) into batches already on the GPU, so no workers and nothing to pin. Where it cannot
    run (no GPU, a torchcodec without NVDEC) the loader falls back to the CPU decoders of ``auto``
    with the configured workers and says why in one warning: the same config then still runs a CPU
    smoke test or a node without NVDEC, decoding the same sampled frames, only slower.
    """
    if backend != GPU_BACKEND:
        return backend, num_workers, pin_memory
    problem = _gpu_decoding_problem()
    if problem is not None:
        log.warning("backend=%s: %s; decoding on the CPU with backend=auto and %d workers instead",
                    GPU_BACKEND, problem, num_workers)
        return "auto", num_workers, pin_memory
    if num_workers:
        log.info("backend=%s decodes in the main process: num_workers=%d is not used", GPU_BACKEND, num_workers)
    return GPU_BACKEND, 0, False


def decode_device(backend: str) -> torch.device:
    """Where ``read_video(backend=...)`` returns its frames."""
    return torch.device("cuda", torch.cuda.current_device()) if backend == GPU_BACKEND else torch.device("cpu")


def auto_backends() -> list[str]:
    """The order ``backend='auto'`` tries: PyAV, then decord when installed.

    PyAV first because it costs the least CPU per clip in ``bench/data_loader.py`` (decord spends
    extra threads that a loader with one worker per core pays for); decord is the second try, so a
    file one decoder rejects can still be read by the other.
    """
    try:
        import decord  # noqa: F401
    except ImportError:
        return ["pyav"]
    return ["pyav", "decord"]


def read_video(
    path_or_bytes: str | os.PathLike | bytes,
    num_frames: int = 8,
    sampling: str = "middle",
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    rng: np.random.Generator | int | None = None,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Decode ``num_frames`` frames sampled by :func:`sample_indices` into uint8 ``[T, H, W, 3]``.

    Returns a torch uint8 tensor (so it feeds :class:`viclip.VideoTransform` and DataLoader
    collation without a copy), on the GPU for ``backend='torchcodec_cuda'`` (loaders choose it
    through :func:`decode_plan`; called without a GPU it raises ``RuntimeError``). ``path_or_bytes``
    is a file path or the bytes of a tar member, read in memory without a temporary file. ``size``
    resizes in the decoder: an int sets the short side (aspect kept), a pair ``(H, W)`` is exact.
    ``backend='auto'`` tries :func:`auto_backends` in turn, so one decoder's quirk does not drop a
    clip. ``name`` labels bytes in error messages (e.g. ``shard.tar:key``). Frames larger than
    ``max_pixels`` (after ``size``) come out scaled down to it, aspect kept (None: no limit); ``max_seconds``
    samples the first seconds only (UMT's DiDeMo ``trimmed30``). Raises :class:`VideoDecodeError`.
    """
    if backend not in ("auto", *BACKENDS):
        raise ConfigError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if SAMPLINGS.get(sampling) is None:
        raise ConfigError(f"sampling must be 'middle' or 'random', got {sampling!r}")
    if backend == GPU_BACKEND and not torch.cuda.is_available():  # not a per-video error: no clip would decode
        raise RuntimeError(f"backend={GPU_BACKEND!r} needs a CUDA GPU and none is visible "
                           "(loaders fall back through decode_plan)")
    src, label = _source(path_or_bytes)
    label = name or label
    order = [backend] if backend != "auto" else auto_backends()
    errors = []
    for b in order:
        if isinstance(src, io.BytesIO):
            src.seek(0)
        try:
            frames = _READERS[b](src, num_frames, sampling, size, rng, max_pixels, max_seconds=max_seconds)
        except ImportError:
            raise
        except _NotAVideo as e:
            errors.append(f"{b}: {e}")
            break
        except Exception as e:  # noqa: BLE001 - decoders raise many types (RuntimeError, av.error.*, DECORDError)
            errors.append(f"{b}: {type(e).__name__}: {e}")
            continue
        return frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    raise VideoDecodeError(f"cannot decode video {label}: {'; '.join(errors)}")
