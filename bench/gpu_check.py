"""One prepared check of a GPU node (H100/H200 class) in one command of at most 10 minutes, as one table.

Sections in order of value, each in its own process group under one deadline (``bench/check_driver.py``):

- ``peak``: the card's measured bf16 matmul peak (the MFU denominator; the datasheet figure, marked as
  such, where the measurement fails) and the SDPA kernel of each tower, with the reason flash is not used;
- ``step``: vit_l14 bf16 fwd+bwd training steps (``bench/model_step.py``'s split step) at mask 0.9 and
  0.0, activation checkpointing on and off, the batch doubled until it no longer fits (then bisected):
  clips/s and MFU at the largest batch that fits;
- ``precision``: vit_l14 embeddings of the same clips in bf16 autocast vs fp32 (max difference);
- ``deepspeed``: ``train.py`` on one GPU, vit_b16 on synthetic shards, 50 steps: the loss falls, and a
  second run resumed from the step-25 checkpoint ends on the same weights (max difference);
- ``loader``: the training loader's clips/s on curated-format shards (short side 256, 4 fps, every
  frame a keyframe, fastdecode) with CPU workers vs GPU decoding (``data.backend=torchcodec_cuda``);
- ``compiled``: ``train.compile``'s compiled block stacks at mask 0.9, at half eager's largest batch,
  and the seconds of the first step, which compiles (last: it is the slowest to start).

On the lent machine it runs through ``bench/gpu_check.sh`` (the wheels it lacks, from ``make gpu-wheels``,
installed into a temporary folder); ``--jsonl`` gets each section's rows as soon as it ends.
``--cpu-smoke`` runs the same code on ``tiny`` on the CPU (fp32, small batches); tests run it.

    bench/gpu_check.sh [--cpu-smoke]      (on the GPU machine; make gpu-wheels prints the whole call)
    python bench/gpu_check.py [--cpu-smoke] [--workdir DIR] [--deadline S] [--jsonl FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from check_driver import format_table, row, run_all
from gpu_check_loader import section_loader

# Order of value, and the most seconds each may take (GPU, CPU smoke); the deadline cuts the later ones.
PLAN = {"peak": (45, 60), "step": (150, 120), "precision": (40, 60), "deepspeed": (150, 240),
        "loader": (60, 90), "compiled": (150, 300)}
DEADLINE = {"gpu": 540, "smoke": 900}  # seconds for the whole check: the device allows 600 per command
# bf16 dense tensor-core TFLOP/s from the vendors' datasheets, used only when the measurement fails.
DATASHEET_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4,
                    "A100": 312.0, "L40S": 362.1}
# Messages of a failed allocation: the caching allocator raises OutOfMemoryError, cuBLAS and cuDNN a
# plain RuntimeError when their workspace or handle cannot be allocated.
OOM_MARKERS = ("out of memory", "ALLOC_FAILED", "CUBLAS_STATUS_NOT_INITIALIZED")


def datasheet_tflops(device_name: str) -> float | None:
    """The datasheet figure of the first (most specific) entry whose name the card's name contains."""
    return next((v for k, v in DATASHEET_TFLOPS.items() if k in device_name), None)


def is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MARKERS))


def free_memory(runner=None) -> None:
    """Drop what a failed step left (partial gradients, cached blocks), so a smaller batch can run."""
    import torch

    if runner is not None:
        runner.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- sections (each runs in its own subprocess) ------------------------------------------------------
def section_peak(s: dict) -> None:
    import torch
    from model_step import matmul_tflops

    from viclip.model import create_model
    from viclip.train.kernels import describe_kernels

    if s["smoke"]:
        peak = matmul_tflops("cpu", torch.float32, n=512, warmup_s=0.2)
        row("matmul peak (CPU fp32, smoke)", f"{peak:.3f} TFLOP/s", peak_tflops=None)
    else:
        peak = matmul_tflops()
        row(f"bf16 matmul peak, {torch.cuda.get_device_name()} (measured)", f"{peak:.0f} TFLOP/s", peak_tflops=peak)
    with torch.device("meta"):  # only the config is read
        model = create_model(s["model"])
    device = torch.device(s["device"])
    for line in describe_kernels(model, [0.9, 0.0], s["dtype"], device).splitlines():
        what, backend = line.split(": SDPA ", 1)
        row(what, f"SDPA {backend}")


def try_batch(runner, batch: int, mask: float, steps: int):
    """``runner.run``'s (timings, first-step seconds), or None where an allocation failed (memory freed)."""
    try:
        return runner.run(batch, mask, steps)
    except RuntimeError as e:  # OutOfMemoryError is a RuntimeError; cuBLAS / cuDNN raise plain ones
        if not is_oom(e):
            raise
    free_memory(runner)  # outside the except block: its traceback no longer holds the step's tensors
    return None


def largest_batch(runner, mask: float, start: int, cap: int, steps: int, deadline: float, bisect: int = 2):
    """Double the batch from ``start`` until it does not fit, reaches ``cap`` or time runs out, then bisect
    between the last that ran and the first that did not (``bisect`` tries); the largest that ran."""
    best, batch, why, failed = None, start, f"cap {cap}", None
    while batch <= cap:
        if time.monotonic() > deadline:
            why = "time box"
            break
        result = try_batch(runner, batch, mask, steps)
        if result is None:
            failed, why = batch, f"out of memory at {batch}"
            break
        best, batch = result[0], batch * 2
    low = best.batch if best is not None else 0
    for _ in range(bisect if failed else 0):
        mid = (low + failed) // 2
        if mid <= low or time.monotonic() > deadline:
            break
        result = try_batch(runner, mid, mask, steps)
        if result is None:
            failed = mid
        else:
            best, low = result[0], mid
    if failed:
        why = f"out of memory at {failed}"
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
    """Only what it measures: mask 0.9 at half eager's largest batch (compiled code may need more memory),
    eager at the same batch first (the ratio's base), each inside the same out-of-memory handling."""
    from model_step import StepRunner

    from viclip.model import get_config

    mask, cfg = 0.9, get_config(s["model"])
    largest = s["batches"].get(str(mask))
    batch = max(1, largest // 2) if largest else (2 if s["smoke"] else 64)
    for attempt in dict.fromkeys((batch, max(1, batch // 2))):
        done = {}
        for compiled in (False, True):
            runner = StepRunner(s["model"], s["device"], compile=compiled, grad_checkpointing=True)
            done[compiled] = try_batch(runner, attempt, mask, s["steps"])
            del runner
            free_memory()
            if done[compiled] is None:
                break
        if None not in done.values():
            (eager, _), (comp, first) = done[False], done[True]
            step_row(f"{s['model']} step, mask {mask:g}, checkpointing on, eager (base of the compiled row)", eager,
                     cfg, s["peak"], eager_reference=True)
            step_row(f"{s['model']} step, mask {mask:g}, checkpointing on, compiled (first step {first:.0f} s)",
                     comp, cfg, s["peak"], ckpt=True, compiled=True)
            return
    row(f"{s['model']} step, mask {mask:g}, compiled", f"out of memory at batch {batch} and {max(1, batch // 2)}")


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
def device_name() -> str:
    """The card's name without creating a CUDA context in the parent (nvidia-smi; torch as the fallback)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip().splitlines()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    return torch.cuda.get_device_name()


def annotate(r: dict, eager: dict) -> str:
    """A compiled row's value with its speed-up over the eager step at the same mask and batch."""
    base = eager.get((r.get("mask"), r.get("batch"))) if r.get("compiled") else None
    if base and not math.isclose(base, 0.0):
        return r["value"] + f", {r['clips_per_s'] / base:.2f}x eager"
    return r["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny on the CPU: the same code paths, fast")
    parser.add_argument("--workdir", default=None, help="shards and runs (default: a temporary directory)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(PLAN))
    parser.add_argument("--deadline", type=float, default=None,
                        help=f"seconds for the whole check (default {DEADLINE['gpu']} on a GPU, "
                             f"{DEADLINE['smoke']} for the smoke)")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each section's rows here as it ends")
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

    started, smoke = time.monotonic(), args.cpu_smoke
    if not smoke and not torch.cuda.is_available():  # asks the driver only: no CUDA context in this process
        sys.exit("bench/gpu_check.py: no CUDA device here; run with --cpu-smoke for the CPU version of the check")
    machine = "CPU smoke (tiny, fp32)" if smoke else device_name()
    deadline = started + (args.deadline or DEADLINE["smoke" if smoke else "gpu"])
    workdir = args.workdir or tempfile.mkdtemp(prefix="viclip_gpu_check_")
    settings = {"smoke": smoke, "model": "tiny" if smoke else "vit_l14", "device": "cpu" if smoke else "cuda",
                "steps": 1 if smoke else 2, "workdir": workdir, "peak": None, "peak_source": None, "batches": {}}
    torch_version = torch.__version__
    print(f"GPU check: {machine}, torch {torch_version}, {os.cpu_count()} CPU cores, workdir {workdir}", flush=True)
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(args.jsonl, "a") as f:
            f.write(json.dumps({"section": "machine", "item": machine, "value": f"torch {torch_version}"}) + "\n")

    def command(name: str) -> list[str]:
        box = PLAN[name][1 if smoke else 0]
        return [sys.executable, __file__, "--section", name,
                "--settings", json.dumps({**settings, "budget": min(box, deadline - time.monotonic())})]

    def on_result(result) -> None:
        for r in result.rows:
            if r.get("peak_tflops"):
                settings["peak"], settings["peak_source"] = r["peak_tflops"], "measured"
            if r.get("ckpt") and not r.get("compiled") and "clips_per_s" in r:
                settings["batches"][str(r["mask"])] = max(r["batch"], settings["batches"].get(str(r["mask"]), 0))
        if result.name == "peak" and settings["peak"] is None and not smoke:
            sheet = datasheet_tflops(machine)  # MFU rows survive a failed measurement
            if sheet:
                settings["peak"], settings["peak_source"] = sheet, "datasheet"
                result.rows.append({"item": f"bf16 peak, {machine} (datasheet, not measured)",
                                    "value": f"{sheet:.0f} TFLOP/s"})
        print(f"[{result.name}] {result.status}; " + "; ".join(f"{r['item']}: {r['value']}" for r in result.rows),
              flush=True)

    plan = [(name, PLAN[name][1 if smoke else 0]) for name in PLAN if name in args.only]
    results, stopped = run_all(plan, command, deadline, args.jsonl, on_result, cwd=REPO)
    eager = {(r["mask"], r["batch"]): r["clips_per_s"] for res in results for r in res.rows
             if r.get("eager_reference") or (r.get("ckpt") and not r.get("compiled") and "clips_per_s" in r)}
    print("\n" + format_table(results, lambda r: annotate(r, eager)))
    if stopped:
        print(f"check {stopped}: the table holds the sections that finished")
    print(f"total {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
