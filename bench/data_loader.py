"""Training-loader throughput: tar -> decode 8 frames -> transform -> batch, against the official way.

Prints clips per CPU-second (CPU time of the main process and its DataLoader workers, so the figure
is per core and holds on a shared machine) and wall-clock clips/s, for:

1. the storage grid: decoding 8 randomly sampled frames from 10 s clips at short side 256 stored at
   several frame rates, keyframe intervals and x264 tunes (and the bytes each costs), which sets
   curation's defaults (``viclip.curation.extract.ExtractConfig``);
2. the full training path (``viclip.data.stream``) on clips cut by curation's extractor with its
   default settings out of a 720p 24 fps source, and on that 720p source itself, with 1 and 2
   workers, next to the official path on the same clips (decord ``VideoReader`` per file,
   ``get_batch`` of the sampled indices, torchvision transforms per clip, default collate). Ours
   runs as training runs it: uint8 batches, normalised later on the GPU; "ours f32" normalises in
   the loader like the official path. Figures are the steady state: the cost of a short epoch
   (worker start-up, shuffle buffer fill) is subtracted from a long one.

    python bench/data_loader.py [--clips 8] [--samples 128] [--out /tmp/viclip_bench_data]

What it showed (2-core VM, idle, 2026-11-25): a keyframe on every frame doubles the clips decoded
per CPU-second against a 1-2 s interval (each sampled frame decodes alone; 52 vs 25 at 4 fps), and
x264's fastdecode tune (CAVLC, no deblocking) adds half again (81) for ~20 % more bytes; 4 fps
keeps 40 frames of a 10 s clip to sample from. Hence curation's defaults: short side 256, 4 fps,
keyframe interval 1 frame, fastdecode: 3x the bytes of the clip at 24 fps with a 2 s interval and a
sixth of its decoding CPU. On curation's own output the full path ran at 44 (1 worker) and 47
(2 workers) clips per CPU-second, 3.4-3.6x the official path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from viclip.curation.extract import extract_clips
from viclip.data.stream import StreamConfig, build_train_loader
from viclip.data.tars import ShardWriter
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video, sample_indices, write_mp4

SECONDS, SOURCE_FPS = 10, 24
# (name, height, width, fps, keyframe interval in frames, x264 tune)
STORAGE_GRID = [
    ("256p 24fps gop48 (as downloaded)", 256, 456, 24, 48, None),
    ("256p 8fps gop8", 256, 456, 8, 8, None),
    ("256p 4fps gop4", 256, 456, 4, 4, None),
    ("256p 8fps gop1", 256, 456, 8, 1, None),
    ("256p 4fps gop1", 256, 456, 4, 1, None),
    ("256p 3fps gop1 (official 3 fps)", 256, 456, 3, 1, None),
    ("256p 4fps gop4 fastdecode", 256, 456, 4, 4, "fastdecode"),
    ("256p 4fps gop1 fastdecode", 256, 456, 4, 1, "fastdecode"),
]
SOURCE_720P = ("720p 24fps gop48", 720, 1280, 24, 48, None)
CURATED = "curation default"  # ExtractConfig() applied to the 720p source


def render(height: int, width: int, fps: int, seed: int) -> np.ndarray:
    """A 10 s scene: a smooth texture panning at a constant speed plus three moving blobs."""
    rng = np.random.default_rng(seed)
    grid = torch.from_numpy(rng.integers(0, 255, (3, height // 16 + 4, width // 16 + 4))).float()
    texture = F.interpolate(grid[None], scale_factor=16, mode="bicubic")[0].clamp(0, 255).byte()
    texture = texture.permute(1, 2, 0).numpy()
    n = SECONDS * fps
    frames = np.empty((n, height, width, 3), np.uint8)
    blobs = rng.uniform(0, 1, (3, 4))  # x, y, vx, vy
    yy, xx = np.mgrid[:height, :width]
    for t in range(n):
        shift = int(t * width * 0.3 / n)
        frames[t] = np.roll(texture, (shift // 3, shift), (0, 1))[:height, :width]
        for x, y, vx, vy in blobs:
            cx = (x + (vx - 0.5) * t / n) % 1 * width
            cy = (y + (vy - 0.5) * t / n) % 1 * height
            frames[t][(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2] = (230, 60, 40)
    return frames


def _dirname(name: str) -> str:
    return name.split(" (")[0].replace(" ", "_")


def make_clips(out: Path, n_clips: int) -> dict[str, Path]:
    """Write each variant as files (for the official path) and one tar set (for ours)."""
    variants = {name: out / _dirname(name) for name, *_ in [*STORAGE_GRID, SOURCE_720P]}
    variants[CURATED] = out / _dirname(CURATED)
    todo = [v for v in [*STORAGE_GRID, SOURCE_720P] if not (variants[v[0]] / "sizes.json").exists()]
    for h, w in sorted({(v[1], v[2]) for v in todo}):
        group = [v for v in todo if (v[1], v[2]) == (h, w)]
        clips = {v[0]: [] for v in group}
        for i in range(n_clips):
            frames = render(h, w, SOURCE_FPS, seed=i)  # one scene, re-encoded at each rate and interval
            for name, _, _, fps, gop, tune in group:
                clips[name].append(write_mp4(frames[:: SOURCE_FPS // fps], fps=fps, gop=gop, tune=tune))
        for name, mp4s in clips.items():
            write_variant(variants[name], mp4s)
    if not (variants[CURATED] / "sizes.json").exists():
        sources = sorted((variants[SOURCE_720P[0]] / "files").glob("*.mp4"))
        write_variant(variants[CURATED], [extract_clips(f, [(0.0, SECONDS)])[0].mp4 for f in sources])
    return variants


def write_variant(directory: Path, mp4s: list[bytes]) -> None:
    (directory / "files").mkdir(parents=True, exist_ok=True)
    with ShardWriter(directory, max_samples=len(mp4s)) as writer:
        for i, mp4 in enumerate(mp4s):
            (directory / "files" / f"{i:03d}.mp4").write_bytes(mp4)
            writer.write(mp4, f"clip {i}", {"video_id": f"v{i}"})


def cpu_seconds() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def decode_rates(files: list[Path], backends: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Clips per CPU-second decoding 8 randomly sampled frames, one thread; the backends take turns
    clip by clip so that a change in the machine's load hits them alike."""
    data = [f.read_bytes() for f in files]
    spent = dict.fromkeys(backends, 0.0)
    for r in range(repeats):
        for i, mp4 in enumerate(data):
            for backend in backends:
                start = cpu_seconds()
                read_video(mp4, 8, "random", backend=backend, rng=r * 1000 + i)
                spent[backend] += cpu_seconds() - start
    return {b: repeats * len(data) / spent[b] for b in backends}


class OfficialClips(Dataset):
    """The official ViCLIP path: decord VideoReader per file, get_batch, torchvision v1 transforms."""

    def __init__(self, files: list[Path], n: int) -> None:
        import torchvision.transforms as T
        from torchvision.transforms import InterpolationMode

        self.files, self.n = files, n
        self.transform = T.Compose([
            T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.Lambda(lambda x: x.float().div(255.0)),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import decord

        decord.bridge.set_bridge("torch")
        reader = decord.VideoReader(str(self.files[i % len(self.files)]), num_threads=1)
        frames = reader.get_batch(sample_indices(len(reader), 8, "random")).permute(0, 3, 1, 2)  # T,C,H,W
        return self.transform(frames), "caption"


def run_loader(make_iter, n_clips: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one pass over ``n_clips``; workers are joined inside."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    seen = 0
    for batch in make_iter():
        video = batch["video"] if isinstance(batch, dict) else batch[0]
        assert video.shape[1:] == (8, 3, 224, 224), video.shape
        seen += video.shape[0]
    assert seen == n_clips, (seen, n_clips)
    return cpu_seconds() - cpu0, time.perf_counter() - t0


def steady(make_iter, samples: int, batch_size: int, workers: int) -> tuple[float, float]:
    """(clips per CPU-second, wall clips/s) net of start-up: a long pass minus a short one."""
    short = batch_size * max(1, workers)
    cpu_s, wall_s = run_loader(lambda: make_iter(short), short)
    cpu_l, wall_l = run_loader(lambda: make_iter(samples), samples)
    return (samples - short) / (cpu_l - cpu_s), (samples - short) / (wall_l - wall_s)


def ours(directory: Path, workers: int, samples: int, batch_size: int, backend: str, normalize: bool):
    transform = VideoTransform(True, normalize=normalize)

    def make_iter(n: int):
        config = StreamConfig(str(directory), batch_size, num_workers=workers, epoch_samples=n, shuffle_buffer=8,
                              backend=backend)
        return iter(build_train_loader(config, lambda texts: torch.zeros(len(texts), 32, dtype=torch.long), transform))
    return steady(make_iter, samples, batch_size, workers)


def official(directory: Path, workers: int, samples: int, batch_size: int):
    files = sorted((directory / "files").glob("*.mp4"))

    def make_iter(n: int):
        return iter(DataLoader(OfficialClips(files, n), batch_size=batch_size, num_workers=workers,
                               shuffle=True, drop_last=True))
    return steady(make_iter, samples, batch_size, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="distinct 10 s clips per variant")
    parser.add_argument("--samples", type=int, default=128, help="clips per loader measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="/tmp/viclip_bench_data")
    parser.add_argument("--samples-720p", type=int, default=48)
    parser.add_argument("--stored", default=CURATED, help="the storage variant the loader runs on")
    parser.add_argument("--backend", default="auto", help="decoder of our path: auto, decord, pyav")
    args = parser.parse_args()
    for flag, n in (("--samples", args.samples), ("--samples-720p", args.samples_720p)):
        if n <= 2 * args.batch_size or n % args.batch_size:
            parser.error(f"{flag} must be a multiple of --batch-size above the short pass of 2 batches, got {n}")
    torch.set_num_threads(1)  # one core per process, as in DataLoader workers
    out = Path(args.out)
    t0 = time.time()
    variants = make_clips(out, args.clips)
    print(f"clips ready in {time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    print("\n1. decode 8 random frames of a 10 s 256p clip: clips per CPU-second (KB per clip)")
    print(f"{'storage':36s} {'pyav':>7s} {'decord':>7s} {'KB':>6s}")
    grid = {}
    for name in [*(v[0] for v in STORAGE_GRID), CURATED]:
        files = sorted((variants[name] / "files").glob("*.mp4"))
        kb = np.mean([f.stat().st_size for f in files]) / 1024
        rates = decode_rates(files, ("pyav", "decord"), repeats=5)
        grid[name] = {**rates, "kb": kb}
        print(f"{name:36s} {rates['pyav']:7.1f} {rates['decord']:7.1f} {kb:6.0f}", flush=True)

    print(f"\n2. full path, batches of {args.batch_size} x 8 x 3 x 224 x 224, steady state: "
          "clips per CPU-second | wall clips/s")
    results = []
    for name, samples in ((args.stored, args.samples), (SOURCE_720P[0], args.samples_720p)):
        for workers in (1, 2):
            row = {"clips": name, "workers": workers}
            row["ours"] = ours(variants[name], workers, samples, args.batch_size, args.backend, normalize=False)
            if name == args.stored:
                row["ours_f32"] = ours(variants[name], workers, samples, args.batch_size, args.backend,
                                       normalize=True)
            row["official"] = official(variants[name], workers, samples, args.batch_size)
            row["ratio"] = row["ours"][0] / row["official"][0]
            results.append(row)
            f32 = f"ours f32 {row['ours_f32'][0]:5.1f} | {row['ours_f32'][1]:5.1f}   " if "ours_f32" in row else ""
            print(f"{name:18s} workers {workers}: ours {row['ours'][0]:5.1f} | {row['ours'][1]:5.1f}   {f32}"
                  f"official {row['official'][0]:5.1f} | {row['official'][1]:5.1f}   ratio {row['ratio']:4.2f}x",
                  flush=True)
    (out / "results.json").write_text(json.dumps({"decode_grid": grid, "loader": results}, indent=1))
    print(f"\nload average now {os.getloadavg()[0]:.1f}; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
