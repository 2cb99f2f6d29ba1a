"""Videos per second of evaluation embedding extraction: decode alone, model alone, and both
together through the evaluation's own loader (``viclip.eval.embed.embed_videos``).

Random weights and generated H.264 clips (K400-like by default: 10 s, 8 fps stored here to keep
generation short, 256x340, one keyframe a second), 8 middle-sampled frames per clip.
CPU (default): tiny and vit_b16 in fp32. GPU (``--device cuda``): vit_l14 in bf16 as well.

    python bench/eval_throughput.py [--models tiny,vit_b16] [--clips 16] [--workers 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import viclip
from viclip.data.annotations import VideoText, VideoTextDataset
from viclip.data.transforms import VideoTransform
from viclip.data.video import write_mp4
from viclip.eval.embed import autocast, embed_videos
from viclip.eval.protocol import VideoProtocol


def make_clips(root: Path, n: int, frames: int, height: int, width: int, fps: float) -> list[VideoText]:
    """Moving noise blocks (so the encoder has real work), one file per clip."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        video = np.stack([np.kron(np.roll(base, t, axis=1), np.ones((8, 8, 1), np.uint8)) for t in range(frames)])
        path = root / f"{i:04d}.mp4"
        path.write_bytes(write_mp4(video, fps=fps))
        records.append(VideoText(str(path), ("noise",)))
    return records


def decode_rate(records, protocol: VideoProtocol, batch_size: int, workers: int) -> float:
    dataset = VideoTextDataset(records, num_frames=protocol.num_frames, sampling=protocol.sampling,
                               transform=VideoTransform(False, image_size=protocol.image_size, normalize=False),
                               backend=protocol.backend)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=VideoTextDataset.collate)
    start = time.perf_counter()
    count = sum(len(batch["index"]) for batch in loader)
    return count / (time.perf_counter() - start)


@torch.no_grad()
def model_rate(model, batch_size: int, batches: int, device: torch.device, precision: str) -> float:
    cfg = model.cfg
    x = torch.randn(batch_size, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=device)
    with autocast(device, precision):
        model.encode_video(x)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        with autocast(device, precision):
            model.encode_video(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma list; default tiny,vit_b16 (+vit_l14 on cuda)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=80, help="stored frames per clip")
    parser.add_argument("--size", default="256x340", help="stored HxW")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    names = (args.models or ("tiny,vit_b16,vit_l14" if device.type == "cuda" else "tiny,vit_b16")).split(",")
    precision = "bf16" if device.type == "cuda" else "fp32"
    height, width = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = make_clips(Path(tmp), args.clips, args.frames, height, width, args.fps)
        print(f"device {device} ({torch.get_num_threads()} threads, {os.cpu_count()} cores); {args.clips} clips of "
              f"{args.frames} frames {height}x{width} H.264, keyframe every {args.fps:g} frames "
              f"(made in {time.perf_counter() - start:.1f} s); 8 middle-sampled frames; batch {args.batch_size}, "
              f"{args.workers} loader workers, decoder {args.backend}")
        print(f"{'model':10}{'precision':>10}{'decode v/s':>12}{'model v/s':>11}{'end-to-end v/s':>16}")
        for name in names:
            torch.manual_seed(0)
            model = viclip.create_model(name).to(device).eval()
            protocol = VideoProtocol(image_size=model.cfg.image_size, backend=args.backend)
            decode = decode_rate(records, protocol, args.batch_size, args.workers)
            batches = max(1, min(8, args.clips // args.batch_size))
            compute = model_rate(model, args.batch_size, batches, device, precision)
            start = time.perf_counter()
            _, ok = embed_videos(model, records, protocol, device, batch_size=args.batch_size,
                                 num_workers=args.workers, precision=precision)
            both = int(ok.sum()) / (time.perf_counter() - start)
            print(f"{name:10}{precision:>10}{decode:>12.1f}{compute:>11.2f}{both:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
