"""Forward+backward time and peak memory of a ViCLIP training step, masked vs unmasked.

CPU (default): vit_b16, 8 frames of 224, mask ratios 0.9 and 0.0, batch sizes 1-8; each setting runs
in a fresh subprocess so that its peak RSS is its own. Prints the masked/unmasked time ratio next to
the token ratio and the analytic FLOPs per clip.
GPU (``--device cuda``): vit_l14 in bf16 autocast as well, with achieved TFLOP/s and MFU against the
card's bf16 matmul peak measured in the same run.

    python bench/model_step.py [--model vit_b16] [--batch-sizes 1,2,4,8] [--steps 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import viclip
from viclip.model import forward_flops, get_config, vision_tokens


def step_once(model, video, tokens, mask_ratio: float) -> None:
    v, t = model(video, tokens, mask_ratio=mask_ratio)
    (v.float().square().mean() + t.float().square().mean()).backward()


def measure(name: str, batch: int, mask_ratio: float, steps: int, device: str) -> dict:
    """Median seconds per forward+backward step and peak memory in GiB for one setting."""
    torch.manual_seed(0)
    model = viclip.create_model(name).to(device).train()
    cfg = model.cfg
    video = torch.randn(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=device)
    tokens = viclip.tokenize(["a person is playing the violin"] * batch).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            step_once(model, video, tokens, mask_ratio)
        if device == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": sorted(times)[len(times) // 2], "peak_gib": peak}


def bf16_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """Measured dense bf16 matmul throughput of this GPU: the denominator of MFU."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def run_in_subprocess(name: str, batch: int, mask_ratio: float, steps: int, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([name, batch, mask_ratio, steps, device])],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, batch_sizes: list[int], steps: int, device: str, peak: float | None) -> None:
    cfg = get_config(name)
    print(f"\n{name} ({cfg.num_frames}x{cfg.image_size}, {device}{', bf16' if device == 'cuda' else ', fp32'})")
    header = f"{'batch':>5} {'mask':>5} {'tokens':>6} {'GFLOP/clip':>10} {'s/step':>8} {'clips/s':>8} {'peak GiB':>8}"
    print(header + ("  TFLOP/s    MFU" if peak else "  masked/unmasked time (tokens)"))
    for batch in batch_sizes:
        rows = {}
        for ratio in (0.9, 0.0):
            r = run_in_subprocess(name, batch, ratio, steps, device)
            tokens = vision_tokens(cfg, ratio)
            # Frozen text tower: forward only; vision: forward + backward (2x forward).
            train_flops = 3 * forward_flops(cfg, ratio, text=False) + (
                forward_flops(cfg, ratio) - forward_flops(cfg, ratio, text=False))
            rows[ratio] = (r, tokens)
            line = (f"{batch:>5} {ratio:>5.1f} {tokens:>6} {forward_flops(cfg, ratio) / 1e9:>10.1f} "
                    f"{r['seconds']:>8.3f} {batch / r['seconds']:>8.2f} {r['peak_gib']:>8.2f}")
            if peak:
                achieved = train_flops * batch / r["seconds"] / 1e12
                line += f"  {achieved:>7.1f} {100 * achieved / peak:>5.1f}%"
            print(line, flush=True)
        (masked, mt), (unmasked, ut) = rows[0.9], rows[0.0]
        if not peak:
            print(f"{'':>5} time ratio {masked['seconds'] / unmasked['seconds']:.3f}, token ratio {mt / ut:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: vit_b16 on CPU, vit_b16 and vit_l14 on GPU")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    peak = None
    if args.device == "cuda":
        peak = bf16_peak_tflops()
        print(f"{torch.cuda.get_device_name()}: measured bf16 matmul peak {peak:.0f} TFLOP/s")
    else:
        print(f"CPU: {torch.get_num_threads()} threads; times are for ratios, not absolute claims")
    names = [args.model] if args.model else (["vit_b16", "vit_l14"] if peak else ["vit_b16"])
    for name in names:
        report(name, batch_sizes, args.steps, args.device, peak)


if __name__ == "__main__":
    main()
