"""The GPU check's ``loader`` section: the training loader's clips/s on curated-format shards, CPU workers
vs NVDEC decoding (``data.backend=torchcodec_cuda``), each measured within one epoch (no worker restart)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from check_driver import row

REPO = Path(__file__).resolve().parents[1]


def curated_shards(out: Path, clips: int, copies: int) -> Path:
    """``clips`` distinct 10 s clips in curation's default storage (ExtractConfig), each written ``copies`` times."""
    import numpy as np

    from viclip.curation.extract import ExtractConfig
    from viclip.data.synthetic import SceneObject, render_clip
    from viclip.data.tars import ShardWriter
    from viclip.data.video import write_mp4

    if (out / "sizes.json").exists():
        return out
    ec = ExtractConfig()
    keyframe_every = 1 if ec.keyframe_interval == 0 else max(1, round(ec.keyframe_interval * ec.fps))
    short = ec.short_side
    mp4s = []
    for i in range(clips):
        obj = SceneObject("red", "circle", ("left", "right", "up", "down")[i % 4])
        frames = render_clip([obj], "gray", short, int(10 * ec.fps), np.random.default_rng(i))
        frames = np.concatenate([frames, frames[:, :, : short * 3 // 4]], axis=2)  # 16:9-ish, short side kept
        mp4s.append(write_mp4(frames, fps=ec.fps, crf=ec.crf, gop=keyframe_every, preset=ec.preset,
                              tune=ec.tune or None))
    with ShardWriter(out, max_samples=64) as writer:
        for c in range(copies):
            for i, mp4 in enumerate(mp4s):
                writer.write(mp4, f"a red circle {c} {i}", {"video_id": f"v{i}"})
    return out


@contextlib.contextmanager
def capture_log(name: str):
    """The messages of logger ``name`` (warnings and up) while the block runs."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(name).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(name).removeHandler(handler)


def gpu_decoding_problem(backend: str, workers: int) -> str | None:
    """Why ``backend`` would fall back to CPU decoding here (decode_plan's own warning), None if it runs."""
    import torch

    from viclip.data.video import decode_plan

    with capture_log("viclip.data.video") as messages:
        used, _, _ = decode_plan(backend, workers, torch.cuda.is_available())
    return None if used == backend else ("; ".join(messages) or "GPU decoding unavailable")


def loader_rate(shards: Path, backend: str, workers: int, batch: int, model: str, device: str,
                seconds: float) -> tuple[float, int]:
    """(clips/s on the device after the first batch, batches per epoch): measured for ``seconds`` or to the end
    of the first epoch, whichever comes first, so the rate has no worker restart in it."""
    import torch
    from hydra import compose, initialize_config_dir

    from viclip.model import get_config
    from viclip.train import loader as train_loader

    overrides = ["data=synthetic", "data.generate=null", f"data.sources.synthetic.shards={shards}",
                 f"data.backend={backend}", f"data.num_workers={workers}", f"train.batch_size={batch}"]
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    loader = train_loader.build_loader(cfg, get_config(model), batch, 0, 1)
    batches = iter(loader)
    next(batches)  # workers start, the shuffle buffer fills
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch_ = next(batches, None)
        if batch_ is None:  # the epoch ended: the next batch would wait for restarted workers
            break
        clips += len(batch_["video"].to(device, non_blocking=True))
    if device == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start), len(loader)


def section_loader(s: dict) -> None:
    from viclip.data.video import GPU_BACKEND, decode_plan

    smoke = s["smoke"]
    # 32 distinct clips, copied so that one epoch (batches spread over all workers) outlasts each measurement
    shards = curated_shards(Path(s["workdir"]) / "curated", 8 if smoke else 32, 32 if smoke else 200)
    workers = 1 if smoke else min(8, (os.cpu_count() or 2) - 1)
    seconds, batch = (5, 8) if smoke else (12, 64)
    used, w, _ = decode_plan("auto", workers, False)
    rate, per_epoch = loader_rate(shards, used, w, batch, s["model"], s["device"], seconds)
    row(f"loader, CPU decoding ({used}, {w} workers), curated shards", f"{rate:.1f} clips/s "
        f"(one epoch of {per_epoch} batches of {batch}: no worker restart)", clips_per_s=rate)
    problem = gpu_decoding_problem(GPU_BACKEND, workers)
    if problem is not None:  # the fallback would only measure the CPU decoders again
        row(f"loader, GPU decoding ({GPU_BACKEND})", f"not measured: {problem}")
        return
    rate, _ = loader_rate(shards, GPU_BACKEND, 0, batch, s["model"], s["device"], seconds)
    row(f"loader, GPU decoding ({GPU_BACKEND}), curated shards", f"{rate:.1f} clips/s", clips_per_s=rate)
