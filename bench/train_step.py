"""Training step time, split into data wait, forward, backward, optimizer and communication.

    python bench/train_step.py                       # CPU: tiny and vit_b16, 1 and 2 ranks (gloo)
    python bench/train_step.py --models vit_l14 --ranks 1 --masks 0.9 0.0 --batch 64   # on a GPU

Each configuration runs under torchrun through the same ``viclip.train.Trainer`` as ``train.py``
(Hydra config, its ``setup()``: DeepSpeed engine, optimizer from the config, loader on generated
synthetic shards, ClipLoss); a subclass only swaps in a loss that times its feature gather. Communication is the
feature all-gather of the loss plus DeepSpeed's gradient reduction (its ``bwd_allreduce`` timer);
forward and backward are shown without them. On a GPU it adds clips/s per GPU and MFU (analytic
FLOPs of the phase's masking, bf16 peak of the device). It also prints the memory of the loss's
saved logits in the local and the global form at the paper's batch (512 per GPU x 64 GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def loss_memory(b_local: int = 512, world: int = 64) -> str:
    """Bytes the loss keeps for backward, measured per logit entry at a small size, scaled to the paper's."""
    import torch

    from viclip.train.loss import ClipLoss

    n, d = 256, 64
    saved = 0

    def pack(t):
        nonlocal saved
        if t.ndim == 2 and t.shape[0] == n and t.shape[1] == n:  # the [rows, columns] logit-shaped tensors
            saved += t.numel() * t.element_size()
        return t

    v, t = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ClipLoss()(v, t, torch.tensor(0.05), torch.arange(n))
    per_entry = saved / (n * n)
    b_global = b_local * world
    local, global_ = per_entry * b_local * b_global, per_entry * b_global * b_global
    return (f"loss memory at {b_local} clips/GPU x {world} GPUs ({per_entry:.0f} B saved per logit entry, "
            f"measured at {n}x{n}):\n  local  {b_local} x {b_global}: {local / 2**30:8.2f} GiB per GPU\n"
            f"  global {b_global} x {b_global}: {global_ / 2**30:8.2f} GiB per GPU ({global_ / local:.0f}x)")


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: the Trainer's setup, then a few warm-up steps and timed ones; rank 0 prints a JSON line."""
    import dataclasses

    import torch
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir

    from viclip.distributed import shutdown
    from viclip.train import Trainer
    from viclip.train.loss import ClipLoss
    from viclip.train.meters import peak_flops, train_flops_per_clip

    class TimedLoss(ClipLoss):
        """Adds up the time of the feature all-gather (communication, not forward)."""

        gather_s = 0.0

        def gather(self, x):
            t0 = time.perf_counter()
            out = super().gather(x)
            self.gather_s += time.perf_counter() - t0
            return out

    class BenchTrainer(Trainer):
        def build_loss(self) -> ClipLoss:
            base = super().build_loss()
            return TimedLoss(base.local_loss, base.same_video, base.rank, base.world_size, base.temp_min)

    gpu = torch.cuda.is_available()
    overrides = [f"model={args.model}", "data=synthetic", f"data.root={args.data}", "data.num_workers=1",
                 f"train.batch_size={args.batch}", "deepspeed=" + ("zero1_bf16" if gpu else "cpu_fp32"),
                 "data.generate=null", "+deepspeed.wall_clock_breakdown=true", "logger=none",
                 f"output_root={args.out}", f"run_name=bench_{args.model}"]
    if args.model != "tiny":
        overrides.append("model.clip_weights=null")
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    trainer = BenchTrainer(cfg)
    trainer.setup()
    engine, info = trainer.engine, trainer.info
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rows = {}
    for mask in args.masks:
        phase = dataclasses.replace(trainer.phases[0], mask_ratio=mask)
        totals = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0, "comm": 0.0}
        for step in range(args.warmup + args.steps):
            trainer.loss_fn.gather_s = 0.0
            t0 = time.perf_counter()
            batch = trainer.next_batch()
            t1 = time.perf_counter()
            loss = trainer.forward_loss(batch, phase)
            sync()
            t2 = time.perf_counter()
            engine.backward(loss)
            sync()
            t3 = time.perf_counter()
            engine.step()
            sync()
            t4 = time.perf_counter()
            reduce_s = engine.timers("bwd_allreduce_microstep").elapsed(reset=True) / 1000
            if step >= args.warmup:
                gather_s = trainer.loss_fn.gather_s
                for key, value in (("data", t1 - t0), ("forward", t2 - t1 - gather_s),
                                   ("backward", t3 - t2 - reduce_s), ("optimizer", t4 - t3),
                                   ("comm", gather_s + reduce_s)):
                    totals[key] += value
        per_step = {k: v / args.steps for k, v in totals.items()}
        # the slowest rank sets the pace
        t = torch.tensor(list(per_step.values()), dtype=torch.float64, device=info.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        per_step = dict(zip(per_step, t.tolist()))
        total = sum(per_step.values())
        clips = args.batch / total
        peak = peak_flops(info.device)
        mfu = clips * train_flops_per_clip(engine.module.cfg, mask) / peak if peak else None
        rows[str(mask)] = {**per_step, "total": total, "clips_per_s_per_rank": clips, "mfu": mfu}
    if info.is_main:
        print("RESULT " + json.dumps({"model": args.model, "ranks": info.world_size, "batch": args.batch,
                                      "device": torch.cuda.get_device_name() if gpu else "cpu", "rows": rows}),
              flush=True)
    shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "vit_b16"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--masks", nargs="+", type=float, default=None,
                   help="mask ratios to time (default: tiny 0.5 0.0; vit_b16/vit_l14 0.9 on the CPU, 0.9 0.0 on a GPU)")
    p.add_argument("--batch", type=int, default=None, help="clips per rank (default: tiny 32, others 2 on CPU)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--data", default=None, help="synthetic data directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="run directory root of the workers (default: a temporary one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from viclip.data.synthetic import make_synthetic

    gpu = torch.cuda.is_available()
    print(f"machine: {torch.cuda.get_device_name() if gpu else 'cpu'}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(loss_memory(), flush=True)
    data = args.data or tempfile.mkdtemp(prefix="viclip_bench_")
    out = args.out or tempfile.mkdtemp(prefix="viclip_bench_runs_")
    make_synthetic(data, n_train=256, n_eval=4, size=64, shard_size=64)
    header = f"{'model':8} {'ranks':>5} {'batch':>5} {'mask':>4} | {'data':>7} {'fwd':>7} {'bwd':>7} {'optim':>7} " \
             f"{'comm':>7} | {'step s':>7} {'clips/s/rank':>12} {'MFU':>6}"
    print(header)
    for model in args.models:
        masks = args.masks or ([0.5, 0.0] if model == "tiny" else [0.9, 0.0] if gpu else [0.9])
        batch = args.batch or (32 if model == "tiny" else 64 if gpu else 2)
        for ranks in args.ranks:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                   __file__, "--worker", f"--model={model}", f"--batch={batch}", f"--steps={args.steps}",
                   f"--warmup={args.warmup}", f"--data={data}", f"--out={out}/{ranks}", "--masks", *map(str, masks)]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{model} x{ranks}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
                continue
            res = json.loads(lines[-1][7:])
            for mask, r in res["rows"].items():
                mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
                print(f"{model:8} {ranks:>5} {batch:>5} {float(mask):>4.2f} | {r['data']:7.3f} {r['forward']:7.3f} "
                      f"{r['backward']:7.3f} {r['optimizer']:7.3f} {r['comm']:7.3f} | {r['total']:7.3f} "
                      f"{r['clips_per_s_per_rank']:12.2f} {mfu}", flush=True)


if __name__ == "__main__":
    main()
