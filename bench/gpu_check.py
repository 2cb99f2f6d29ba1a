"""One prepared check of a GPU node (H100/H200 class), under 8 minutes, printed as one table.

Sections, each in its own subprocess under its own time box, so that one that fails or hangs leaves
the others' rows (a timed-out section keeps the rows it printed) and the check never crashes whole:

- ``peak``: the card's measured bf16 matmul peak (the MFU denominator) and the SDPA kernel of each tower;
- ``step``: vit_l14 bf16 fwd+bwd training steps (``bench/model_step.py``'s split step) at mask 0.9 and
  0.0, activation checkpointing on and off, the batch doubled until it no longer fits: clips/s and MFU
  at the largest batch that fits;
- ``compiled``: the same with ``train.compile``'s compiled block stacks (checkpointing on), and the
  seconds of the first step, which compiles;
- ``loader``: the training loader's clips/s on curated-format shards (short side 256, 4 fps, every
  frame a keyframe, fastdecode) with CPU workers vs GPU decoding (``data.backend=torchcodec_cuda``);
- ``deepspeed``: ``train.py`` on one GPU, vit_b16 on synthetic shards, 50 steps: the loss falls, and a
  second run resumed from the step-25 checkpoint ends on the same weights (max difference);
- ``precision``: vit_l14 embeddings of the same clips in bf16 autocast vs fp32 (max difference).

``--cpu-smoke`` runs the same code on ``tiny`` on the CPU (fp32, small batches, 10 steps) in about a
minute on an idle machine; tests/test_gpu_check.py runs it. Every figure is measured in the run.

    python bench/gpu_check.py [--cpu-smoke] [--workdir DIR]        (make gpu-check)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

# Seconds per section on the GPU (480 in all, start-up of each subprocess included) and on the CPU smoke.
BUDGETS = {"peak": (30, 60), "step": (140, 120), "compiled": (120, 300), "loader": (50, 90),
           "deepspeed": (110, 240), "precision": (30, 60)}


def row(item: str, value: str, **fields) -> None:
    """One table row, printed at once (a section killed by its time box keeps the rows it printed)."""
    print("ROW " + json.dumps({"item": item, "value": value, **fields}), flush=True)


# -- sections (each runs in its own subprocess) ------------------------------------------------------
def section_peak(s: dict) -> None:
    import torch
    from model_step import matmul_tflops

    from viclip.model import create_model
    from viclip.train.kernels import describe_kernels

    if s["smoke"]:
        row("matmul peak (CPU fp32, smoke)", f"{matmul_tflops('cpu', torch.float32, n=512, reps=5):.3f} TFLOP/s",
            peak_tflops=None)
    else:
        peak = matmul_tflops()
        row(f"bf16 matmul peak, {torch.cuda.get_device_name()}", f"{peak:.0f} TFLOP/s", peak_tflops=peak)
    with torch.device("meta"):  # only the config is read
        model = create_model(s["model"])
    device = torch.device(s["device"])
    for line in describe_kernels(model, [0.9, 0.0], s["dtype"], device).splitlines():
        what, backend = line.split(": SDPA ", 1)
        row(what, f"SDPA {backend}")


def largest_batch(runner, mask: float, start: int, cap: int, steps: int, deadline: float):
    """Double the batch from ``start`` until it does not fit, reaches ``cap`` or time runs out; the last that ran."""
    import torch

    best, batch, why = None, start, f"cap {cap}"
    while batch <= cap:
        if time.monotonic() > deadline:
            why = "time box"
            break
        try:
            best = runner.run(batch, mask, steps)[0]
        except torch.cuda.OutOfMemoryError:
            why = f"out of memory at {batch}"
            runner.optimizer.zero_grad(set_to_none=True)  # the failed step's partial gradients
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        batch *= 2
    return best, why


def step_row(label: str, r, cfg, peak: float | None, **extra) -> None:
    from viclip.train.meters import train_flops_per_clip

    mfu = train_flops_per_clip(cfg, r.mask_ratio) * r.clips_per_s / (peak * 1e12) if peak else None
    value = f"{r.clips_per_s:.1f} clips/s" + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
    row(label, value + f", batch {r.batch}, {r.peak_gib:.1f} GiB", clips_per_s=r.clips_per_s, batch=r.batch,
        mask=r.mask_ratio, **extra)


def section_step(s: dict) -> None:
    from model_step import StepRunner

    deadline = time.monotonic() + s["budget"] - 10
    for ckpt in (True, False):
        runner = StepRunner(s["model"], s["device"], grad_checkpointing=ckpt)
        for mask in (0.9, 0.0):
            start, cap = (2, 8) if s["smoke"] else ((64, 2048) if mask else (8, 256))  # caps: ~5 s per step
            best, why = largest_batch(runner, mask, start, cap, s["steps"], deadline)
            label = f"{s['model']} step, mask {mask:g}, checkpointing {'on' if ckpt else 'off'}, eager"
            if best is None:
                row(label, f"no batch ran ({why})")
            else:
                step_row(label + f" (largest batch: stopped by {why})", best, runner.cfg, s["peak"], ckpt=ckpt)
        del runner


def section_compiled(s: dict) -> None:
    from model_step import StepRunner

    runner = StepRunner(s["model"], s["device"], compile=True, grad_checkpointing=True)
    for mask in (0.9, 0.0):
        batch = s["batches"].get(str(mask)) or (4 if s["smoke"] else 64)
        r, first = runner.run(batch, mask, s["steps"])
        step_row(f"{s['model']} step, mask {mask:g}, checkpointing on, compiled (first step {first:.0f} s)", r,
                 runner.cfg, s["peak"], ckpt=True, compiled=True)


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


def loader_rate(shards: Path, backend: str, workers: int, batch: int, model: str, device: str,
                seconds: float) -> tuple[float, str, int, str]:
    """(clips/s on the device after the first batch, backend used, workers used, the decoder's warnings)."""
    import torch
    from hydra import compose, initialize_config_dir

    from viclip.data.video import decode_plan
    from viclip.model import get_config
    from viclip.train import loader as train_loader

    overrides = ["data=synthetic", "data.generate=null", f"data.sources.synthetic.shards={shards}",
                 f"data.backend={backend}", f"data.num_workers={workers}", f"train.batch_size={batch}"]
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with capture_log("viclip.data.video") as messages:  # why GPU decoding fell back, if it did
        used, used_workers, _ = decode_plan(backend, workers, torch.cuda.is_available())
    batches = train_loader.endless(train_loader.build_loader(cfg, get_config(model), 0, 1))
    next(batches)  # workers start, the shuffle buffer fills
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        clips += len(next(batches)["video"].to(device, non_blocking=True))
    if device == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start), used, used_workers, "; ".join(messages)


def section_loader(s: dict) -> None:
    from viclip.data import video

    smoke = s["smoke"]
    shards = curated_shards(Path(s["workdir"]) / "curated", 8 if smoke else 32, 4 if smoke else 16)
    workers = 1 if smoke else min(8, (os.cpu_count() or 2) - 1)
    seconds = 5 if smoke else 12
    rate, used, w, _ = loader_rate(shards, "auto", workers, 8 if smoke else 64, s["model"], s["device"], seconds)
    row(f"loader, CPU decoding ({used}, {w} workers), curated shards", f"{rate:.1f} clips/s")
    gpu = getattr(video, "GPU_BACKEND", None)
    if gpu is None:
        row("loader, GPU decoding", "absent: this checkout has no data.backend=torchcodec_cuda")
        return
    rate, used, w, why = loader_rate(shards, gpu, workers, 8 if smoke else 64, s["model"], s["device"], seconds)
    note = "" if used == gpu else f" (fell back to {used}, {w} workers: {why or 'GPU decoding unavailable'})"
    row(f"loader, GPU decoding ({gpu}), curated shards", f"{rate:.1f} clips/s{note}")


def train_run(s: dict, name: str, steps: int, extra: list[str]) -> Path:
    smoke = s["smoke"]
    run_dir = Path(s["workdir"]) / "runs" / name
    overrides = [
        "experiment=demo" if smoke else "model=vit_b16", "data=synthetic", f"data.root={s['workdir']}/synthetic",
        "data.generate.n_train=256", "data.generate.shard_size=64", "model.clip_weights=null",
        "deepspeed=" + ("cpu_fp32" if smoke else "zero1_bf16"), "logger=none", "final_eval=null",
        f"output_dir={run_dir}", f"train.batch_size={8 if smoke else 32}", f"train.steps_per_epoch={steps}",
        f"train.ckpt_every={steps // 2}", "train.log_every=1", "train.keep_checkpoints=3",
        "phases.pretrain.epochs=1", "phases.pretrain.warmup_epochs=0.2", "phases.unmasked.epochs=0",
        "phases.unmasked.warmup_epochs=0",
        f"data.num_workers={1 if smoke else 4}", *([] if smoke else ["optim.lr=1e-4"]), *extra,
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        out = proc.stderr.strip() or proc.stdout.strip() or "?"
        lines = [x for x in out.splitlines() if "HYDRA_FULL_ERROR" not in x]
        raise RuntimeError(f"train.py ({name}) exited {proc.returncode}: {' | '.join(lines[-3:])}")
    return run_dir


def section_deepspeed(s: dict) -> None:
    import torch

    from viclip.train.checkpoint import tag_for

    steps = 10 if s["smoke"] else 50
    first = train_run(s, "full", steps, [])
    losses = [json.loads(line)["loss"] for line in (first / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("loss") is not None]
    k = max(1, len(losses) // 5)
    head, tail = sum(losses[:k]) / k, sum(losses[-k:]) / k
    row(f"train.py, {'tiny (cpu_fp32)' if s['smoke'] else 'vit_b16 (zero1_bf16)'}, {steps} steps, synthetic",
        f"loss {head:.3f} -> {tail:.3f} (mean of first/last {k}): {'falls' if tail < head else 'does NOT fall'}")
    resumed = train_run(s, "resumed", steps, [f"resume={first / 'checkpoints' / tag_for(steps // 2)}"])
    a = torch.load(first / "weights" / "pretrain.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(resumed / "weights" / "pretrain.pth", map_location="cpu", weights_only=True)["model"]
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    row(f"resume from step {steps // 2}, {steps - steps // 2} steps more, vs the uninterrupted run",
        f"max weight difference {diff:.3g}" + (" (bit-exact)" if diff == 0 else ""))


def section_precision(s: dict) -> None:
    import torch
    import torch.nn.functional as F

    import viclip

    device = s["device"]
    torch.manual_seed(0)
    with torch.device(device):
        model = viclip.create_model(s["model"]).eval()
    cfg = model.cfg
    video = torch.randn(2 if s["smoke"] else 8, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=device)
    with torch.no_grad():
        fp32 = model.encode_video(video).float()
        with torch.autocast(device, dtype=torch.bfloat16):
            bf16 = model.encode_video(video).float()
    cos = F.cosine_similarity(fp32, bf16, dim=-1)
    row(f"{s['model']} embeddings, bf16 autocast vs fp32, {len(video)} clips (random weights)",
        f"max |diff| {(fp32 - bf16).abs().max().item():.3g} (embedding max {fp32.abs().max().item():.3g}), "
        f"min cosine {cos.min().item():.5f}")


SECTIONS = {"peak": section_peak, "step": section_step, "compiled": section_compiled, "loader": section_loader,
            "deepspeed": section_deepspeed, "precision": section_precision}


# -- driver ------------------------------------------------------------------------------------------
def run_section(name: str, settings: dict, budget: float) -> tuple[list[dict], str]:
    """The section's rows and its status (ok / failed: ... / timed out after N s)."""
    start = time.monotonic()
    cmd = [sys.executable, __file__, "--section", name, "--settings", json.dumps({**settings, "budget": budget})]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget, check=False)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, code = "", None
    rows = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
    took = time.monotonic() - start
    if code is None:
        return rows, f"timed out after {budget:.0f} s (time box)"
    if code:
        return rows, f"failed in {took:.0f} s: {(err.strip().splitlines() or ['exit ' + str(code)])[-1][:200]}"
    return rows, f"ok in {took:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny on the CPU: the same code paths, fast")
    parser.add_argument("--workdir", default=None, help="shards and runs (default: a temporary directory)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        settings = json.loads(args.settings)
        import torch

        settings["dtype"] = torch.float32 if settings["smoke"] else torch.bfloat16
        SECTIONS[args.section](settings)
        return

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py: no CUDA device here; run with --cpu-smoke for the CPU version of the check")
    workdir = args.workdir or tempfile.mkdtemp(prefix="viclip_gpu_check_")
    settings = {"smoke": smoke, "model": "tiny" if smoke else "vit_l14", "device": "cpu" if smoke else "cuda",
                "steps": 1 if smoke else 2, "workdir": workdir, "peak": None, "batches": {}}
    machine = "CPU smoke (tiny, fp32)" if smoke else f"{torch.cuda.get_device_name()}, bf16"
    print(f"GPU check: {machine}, torch {torch.__version__}, {os.cpu_count()} CPU cores, workdir {workdir}", flush=True)
    table, started = [], time.monotonic()
    for name in args.only:
        rows, status = run_section(name, settings, BUDGETS[name][1 if smoke else 0])
        for r in rows:
            if r.get("peak_tflops"):
                settings["peak"] = r["peak_tflops"]
            if r.get("ckpt") and not r.get("compiled") and "clips_per_s" in r:
                settings["batches"][str(r["mask"])] = r["batch"]
        table.append((name, rows, status))
        print(f"[{name}] {status}; " + "; ".join(f"{r['item']}: {r['value']}" for r in rows), flush=True)
    eager = {(r["mask"], r["batch"]): r["clips_per_s"] for _, rows, _ in table for r in rows
             if r.get("ckpt") and not r.get("compiled") and "clips_per_s" in r}
    width = max((len(r["item"]) for _, rows, _ in table for r in rows), default=20)
    print(f"\n{'section':<10} {'what':<{width}}  result")
    for name, rows, status in table:
        for r in rows:
            value = r["value"]
            base = eager.get((r.get("mask"), r.get("batch"))) if r.get("compiled") else None
            if base and not math.isclose(base, 0.0):
                value += f", {r['clips_per_s'] / base:.2f}x eager"
            print(f"{name:<10} {r['item']:<{width}}  {value}")
        if not status.startswith("ok"):
            print(f"{name:<10} {'(section)':<{width}}  {status}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
