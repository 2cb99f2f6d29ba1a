"""The training step of one device, split into video tower, text tower, loss and optimizer, masked vs unmasked,
and what the measured clips/s make of the 10M-FLT recipe.

Each step runs the towers forward, the loss forward + backward on detached features (its gradient
w.r.t. the features), then each tower's backward from that gradient, then AdamW: the same gradients as
one ``loss.backward()``, with each part timed on its own (synchronised on a GPU). With one process the
loss's feature gathers are identities; ``bench/train_step.py`` times them across ranks. Rows go up in
batch size until the next would not fit: on the CPU the peak RSS of each setting (its own subprocess)
is fitted as base + per-clip and a batch predicted past ``--max-gib`` is replaced by the largest
predicted to fit (once); on a GPU one that runs out of memory is reported as such.

The projection: the recipe's clips (``experiment=viclip_*_internvid_10m_flt``: data.num_samples,
phases' epochs and mask ratios) over the best measured clips/s of each mask ratio, as device-hours
of one device (no communication), beside the paper's 64 A100 x 3 days.

    python bench/model_step.py [--model vit_b16] [--batch-sizes 2,8,32] [--steps 2] [--device cpu|cuda]

What it showed (2-core VM shared with other engineers' jobs, 2026-12-02, vit_b16 fp32, 11 GiB budget):
masked/unmasked at batch 2, video tower 0.05 and whole step 0.07 in one run (medians of 1), 0.17 and
0.23 in a busier one (medians of 2), against a token ratio of 0.10: the load moves such ratios by 3x.
The masked step's shares shift with the batch: at 2, video 70 %, text 13 %, optimizer 16 %; at 32,
video 90 %, text 5 %, optimizer 5 %, loss < 0.1 %. Unmasked, about 6 clips fit in the budget.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import viclip
from viclip.model import get_config, vision_tokens
from viclip.train.kernels import compile_towers
from viclip.train.loss import ClipLoss
from viclip.train.meters import train_flops_per_clip
from viclip.train.optim import build_optimizer, param_groups

REPO = Path(__file__).resolve().parents[1]
PAPER_GPUS, PAPER_DAYS = 64, 3  # "ViCLIP is learned with 64 NVIDIA A100 GPUs for 3 days with 50M video-text pairs"
PARTS = ("video", "text", "loss", "optimizer")


@dataclass
class StepSplit:
    """Median seconds per training step of each part, and the setting's peak memory."""

    batch: int
    mask_ratio: float
    video: float
    text: float
    loss: float
    optimizer: float
    peak_gib: float

    @property
    def total(self) -> float:
        return self.video + self.text + self.loss + self.optimizer

    @property
    def clips_per_s(self) -> float:
        return self.batch / self.total


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_step(model, optimizer, loss_fn, video, tokens, mask_ratio: float, autocast, device: str) -> dict:
    """One optimizer step; seconds of each part (see the module docstring for how backward is split)."""
    t = [time.perf_counter()]

    def mark() -> None:
        synchronize(device)
        t.append(time.perf_counter())

    with autocast:
        v = model.vision_encoder(video, mask_ratio=mask_ratio)
    mark()
    with autocast:
        txt = model.encode_text(tokens)
    mark()
    v_leaf, t_leaf = v.detach().requires_grad_(), txt.detach().requires_grad_(txt.requires_grad)
    loss_fn(v_leaf, t_leaf, model.temp, torch.arange(len(video), device=video.device)).backward()
    mark()
    v.backward(v_leaf.grad)
    mark()
    if txt.requires_grad:  # a frozen text tower (the paper's) has no backward
        txt.backward(t_leaf.grad)
    mark()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark()
    d = [b - a for a, b in itertools.pairwise(t)]
    return {"video": d[0] + d[3], "text": d[1] + d[4], "loss": d[2], "optimizer": d[5]}


class StepRunner:
    """One model + AdamW + loss on a device, timed at any batch and mask ratio (bf16 autocast on a GPU)."""

    def __init__(self, name: str, device: str, compile: bool = False, grad_checkpointing: bool | None = None):
        torch.manual_seed(0)
        overrides = {} if grad_checkpointing is None else {"grad_checkpointing": grad_checkpointing}
        with torch.device(device):  # built in place: ViT-L's init on the CPU alone takes seconds
            self.model = viclip.create_model(name, **overrides).train()
        if compile:
            compile_towers(self.model)
        self.device, self.cfg = device, self.model.cfg
        self.optimizer = build_optimizer(param_groups(self.model, 0.2), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
        self.loss_fn = ClipLoss(temp_min=self.cfg.temp_min)
        self.autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def run(self, batch: int, mask_ratio: float, steps: int) -> tuple[StepSplit, float]:
        """(median part times over ``steps`` after one warm-up step, seconds of the warm-up step: compiles)."""
        cfg, device = self.cfg, self.device
        video = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=device)
        tokens = viclip.tokenize(["a person is playing the violin"] * batch, context_length=cfg.context_length)
        tokens = tokens.to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = [timed_step(self.model, self.optimizer, self.loss_fn, video, tokens, mask_ratio, self.autocast, device)
                for _ in range(steps + 1)]
        median = {part: sorted(r[part] for r in runs[1:])[len(runs[1:]) // 2] for part in PARTS}
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        return StepSplit(batch, mask_ratio, peak_gib=peak, **median), sum(runs[0].values())


def measure(name: str, batch: int, mask_ratio: float, steps: int, device: str) -> StepSplit:
    """One setting on a fresh model (see :class:`StepRunner`)."""
    return StepRunner(name, device).run(batch, mask_ratio, steps)[0]


def measure_isolated(name: str, batch: int, mask_ratio: float, steps: int, device: str) -> StepSplit | str:
    """CPU: in a fresh subprocess, so that the peak RSS is this setting's; GPU: in process, OOM reported."""
    if device == "cuda":
        try:
            return measure(name, batch, mask_ratio, steps, device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return "out of memory"
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps([name, batch, mask_ratio, steps, device])],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        return f"failed: {(out.stderr.strip().splitlines() or ['exit ' + str(out.returncode)])[-1]}"
    return StepSplit(**json.loads(out.stdout.strip().splitlines()[-1]))


def fit_memory(points: list[StepSplit]) -> tuple[float, float]:
    """(base GiB, GiB per clip) through the measured peaks; one point: all of it per clip (an upper bound)."""
    if len(points) < 2 or points[-1].batch == points[0].batch:
        return 0.0, points[-1].peak_gib / points[-1].batch
    a, b = points[0], points[-1]
    per_clip = max((b.peak_gib - a.peak_gib) / (b.batch - a.batch), 1e-6)
    return max(a.peak_gib - per_clip * a.batch, 0.0), per_clip


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable line; pass --max-gib")


def matmul_tflops(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 20,
                  warmup_s: float = 1.0) -> float:
    """Measured dense matmul throughput (TFLOP/s): on a GPU in bf16, the denominator of MFU.

    Products run for ``warmup_s`` seconds first: a GPU's clocks ramp up under load, and timing from a
    cold start under-reports the peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    start = time.perf_counter()
    while True:
        a @ b
        synchronize(device)
        if time.perf_counter() - start >= warmup_s:
            break
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def recipe(name: str) -> tuple[int, list[tuple[str, float, float]]]:
    """(clips per epoch, [(phase, epochs, mask_ratio)]) of the 10M-FLT experiment for this model's size."""
    from hydra import compose, initialize_config_dir

    size = "l14" if name == "vit_l14" else "b16"
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment=viclip_{size}_internvid_10m_flt"])
    clips = sum(int(s.num_samples) for s in cfg.data.sources.values())
    return clips, [(p, float(v.epochs), float(v.mask_ratio)) for p, v in cfg.phases.items() if v.epochs]


def projection(name: str, best: dict[float, StepSplit], device_name: str, on_gpu: bool) -> list[str]:
    """The recipe's device-hours at the best measured clips/s of each phase's mask ratio."""
    clips, phases = recipe(name)
    cfg = get_config(name)
    hours, flops, lines = 0.0, 0.0, []
    for phase, epochs, mask in phases:
        if mask not in best:
            return [f"projection: no measured step at mask {mask} (phase {phase}); run with --masks including it"]
        h = epochs * clips / best[mask].clips_per_s / 3600
        hours += h
        flops += epochs * clips * train_flops_per_clip(cfg, mask)
        lines.append(f"  {phase}: {epochs:g} epochs x {clips:,} clips at mask {mask:g}, {best[mask].clips_per_s:.2f} "
                     f"clips/s (batch {best[mask].batch}): {h:,.1f} h")
    paper = PAPER_GPUS * PAPER_DAYS * 24
    unit = "GPU-hours" if on_gpu else "CPU-hours"
    head = (f"projection, {name} on InternVid-10M-FLT ({flops / 1e18:,.1f} EFLOP of matmuls), one {device_name} "
            f"without communication: {hours:,.1f} {unit} = {hours / paper:.3g} x the paper's {paper:,} A100-hours "
            f"({PAPER_GPUS} A100 x {PAPER_DAYS} days, which trained its 50M-pair run)")
    if not on_gpu:
        head += "\n  (a CPU figure: it says nothing about a GPU; run this on one for the real projection)"
    return [head, *lines]


def report(name: str, batch_sizes: list[int], masks: list[float], steps: int, device: str, peak: float | None,
           max_gib: float) -> None:
    cfg = get_config(name)
    precision = "bf16 autocast" if device == "cuda" else "fp32"
    text = "frozen" if cfg.freeze_text else "trained"
    print(f"\n{name} ({cfg.num_frames}x{cfg.image_size}, {device}, {precision}, text tower {text}); "
          f"seconds per step, medians of {steps}")
    header = (f"{'batch':>5} {'mask':>4} {'tokens':>6} | {'video':>8} {'text':>8} {'loss':>8} {'optim':>8} | "
              f"{'step s':>8} {'clips/s':>8} {'peak GiB':>8}")
    print(header + ("  TFLOP/s    MFU" if peak else ""))
    measured: dict[float, list[StepSplit]] = {m: [] for m in masks}
    for batch in batch_sizes:
        for mask in masks:
            run = batch
            if measured[mask] and device != "cuda":
                base, per_clip = fit_memory(measured[mask])
                if base + per_clip * batch > max_gib:
                    fits = int((max_gib - base) / per_clip)
                    print(f"{batch:>5} {mask:>4.1f} {vision_tokens(cfg, mask):>6} | not run: "
                          f"{base + per_clip * batch:.1f} GiB predicted > --max-gib {max_gib:.1f}; largest batch "
                          f"that fits: about {fits}" + (", run instead" if fits > measured[mask][-1].batch else ""),
                          flush=True)
                    if fits <= measured[mask][-1].batch:
                        continue
                    run = fits
            prefix = f"{run:>5} {mask:>4.1f} {vision_tokens(cfg, mask):>6} | "
            r = measure_isolated(name, run, mask, steps, device)
            if isinstance(r, str):
                print(prefix + r, flush=True)
                continue
            measured[mask].append(r)
            line = prefix + " ".join(f"{getattr(r, p):>8.3f}" for p in PARTS)
            line += f" | {r.total:>8.3f} {r.clips_per_s:>8.2f} {r.peak_gib:>8.2f}"
            if peak:
                achieved = train_flops_per_clip(cfg, mask) * r.clips_per_s / 1e12
                line += f"  {achieved:>7.1f} {100 * achieved / peak:>5.1f}%"
            print(line, flush=True)
        rows = {m: next((r for r in measured[m] if r.batch == batch), None) for m in masks}
        if 0.0 in rows and len(rows) > 1 and all(rows.values()):
            un = rows[0.0]
            for mask, r in rows.items():
                if mask > 0:
                    print(f"{'':>5} batch {batch}, mask {mask:g} / 0: video tower {r.video / un.video:.3f}, whole step "
                          f"{r.total / un.total:.3f} (tokens {vision_tokens(cfg, mask) / vision_tokens(cfg):.3f}); "
                          f"masked step shares: " + ", ".join(f"{p} {getattr(r, p) / r.total:.0%}" for p in PARTS))
    best = {m: max(rs, key=lambda r: r.clips_per_s) for m, rs in measured.items() if rs}
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print("\n".join(projection(name, best, device_name, device == "cuda")), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: vit_b16 on the CPU, vit_b16 and vit_l14 on a GPU")
    parser.add_argument("--batch-sizes", default=None, help="ascending; default 2,8,32 (CPU), 32,128,512 (GPU)")
    parser.add_argument("--masks", default="0.9,0.0", help="mask ratios, comma-separated")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting, after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-gib", type=float, default=None, help="CPU memory budget (default: half of MemAvailable)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asdict(measure(*json.loads(args.one)))))
        return
    gpu = args.device == "cuda"
    batch_sizes = [int(b) for b in (args.batch_sizes or ("32,128,512" if gpu else "2,8,32")).split(",")]
    masks = [float(m) for m in args.masks.split(",")]
    peak = None
    if gpu:
        peak = matmul_tflops()
        print(f"{torch.cuda.get_device_name()}: measured bf16 matmul peak {peak:.0f} TFLOP/s")
    else:
        print(f"CPU: {torch.get_num_threads()} threads; compare ratios, not absolute times")
    max_gib = args.max_gib if args.max_gib is not None else available_gib() / 2
    for name in [args.model] if args.model else (["vit_b16", "vit_l14"] if gpu else ["vit_b16"]):
        report(name, batch_sizes, masks, args.steps, args.device, peak, max_gib)


if __name__ == "__main__":
    main()
