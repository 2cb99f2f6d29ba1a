"""Training-loader throughput: tar -> decode 8 frames -> transform -> batch, against the official way.

Prints clips per CPU-second (CPU time of the main process and its DataLoader workers, so the figure
is per core and holds on a shared machine) and wall-clock clips/s, for:

1. the storage grid: decoding 8 randomly sampled frames from 10 s clips at short side 256 stored at
   several frame rates, keyframe intervals and x264 tunes (and the bytes each costs), which sets
   curation's defaults (``viclip.curation.extract.ExtractConfig``), with our PyAV reader, the same
   reader with its non-reference skipping off ("no skip"), and decord ``get_batch``;
2. the full training path (``viclip.data.stream``) on one core (1 worker by default), on clips as
   x264 writes them by default (8 fps, a keyframe every 2 s, B-frames and B-pyramid: foreign
   clips) and on clips cut by curation's extractor with its default settings out of a 720p 24 fps
   source, next to the official path on the same clips (decord ``VideoReader`` per file,
   ``get_batch`` of the sampled indices, torchvision transforms per clip, default collate). Ours
   runs as training runs it: uint8 batches, normalised later on the GPU; "ours f32" normalises in
   the loader like the official path. Figures are the steady state: the cost of a short epoch
   (worker start-up, shuffle buffer fill) is subtracted from a long one; the paths take turns
   (``--rounds``) so that a change in the machine's load hits them alike.

    python bench/data_loader.py [--clips 8] [--samples 128] [--rounds 2] [--workers 1 2] [--out DIR]

What it showed (2-core VM, idle, 2026-11-25): a keyframe on every frame doubles the clips decoded
per CPU-second against a 1-2 s interval (each sampled frame decodes alone; 52 vs 25 at 4 fps), and
x264's fastdecode tune (CAVLC, no deblocking) adds half again (81) for ~20 % more bytes; 4 fps
keeps 40 frames of a 10 s clip to sample from. Hence curation's defaults: short side 256, 4 fps,
keyframe interval 1 frame, fastdecode: 3x the bytes of the clip at 24 fps with a 2 s interval and a
sixth of its decoding CPU. On curation's own output the full path ran at 44 (1 worker) and 47
(2 workers) clips per CPU-second, 3.4-3.6x the official path.

Again on 2026-12-02, the same kind of VM shared with other jobs (load average 6.5 at the start,
4.8 at the end, on its 2 cores, so only the side-by-side ratios carry over): decoding 8 frames of
the x264-default clips, our reader ran at 1.60x decord and 1.17x itself with the non-reference skip
off (1.36x on the 24 fps clips with a 2 s interval; level, within 5 %, where every frame is a
keyframe and there is nothing to skip); the full path on one worker ran at 2.29x the official path
on x264-default clips (1.95x when ours also normalises to float in the loader) and 3.15x on curated
clips (2.51x).
"""

from __future__ import annotations

import argparse
import contextlib
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
from viclip.data import video
from viclip.data.stream import StreamConfig, build_train_loader
from viclip.data.tars import ShardWriter
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video, sample_indices, write_mp4

SECONDS, SOURCE_FPS = 10, 24
# (name, height, width, fps, keyframe interval in frames, x264 tune, x264 preset)
STORAGE_GRID = [
    ("256p 24fps gop48 (as downloaded)", 256, 456, 24, 48, None, "veryfast"),
    ("256p 8fps gop8", 256, 456, 8, 8, None, "veryfast"),
    ("256p 4fps gop4", 256, 456, 4, 4, None, "veryfast"),
    ("256p 8fps gop1", 256, 456, 8, 1, None, "veryfast"),
    ("256p 4fps gop1", 256, 456, 4, 1, None, "veryfast"),
    ("256p 3fps gop1 (official 3 fps)", 256, 456, 3, 1, None, "veryfast"),
    ("256p 4fps gop4 fastdecode", 256, 456, 4, 4, "fastdecode", "veryfast"),
    ("256p 4fps gop1 fastdecode", 256, 456, 4, 1, "fastdecode", "veryfast"),
]
# foreign clips as x264 writes them by default (preset medium: 3 B-frames, B-pyramid, crf 23), a keyframe every 2 s
X264_DEFAULT = ("256p 8fps gop16 x264 defaults", 256, 456, 8, 16, None, "medium")
SOURCE_720P = ("720p 24fps gop48", 720, 1280, 24, 48, None, "veryfast")
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
    encoded = [*STORAGE_GRID, X264_DEFAULT, SOURCE_720P]
    variants = {name: out / _dirname(name) for name, *_ in encoded}
    variants[CURATED] = out / _dirname(CURATED)
    todo = [v for v in encoded if not (variants[v[0]] / "sizes.json").exists()]
    for h, w in sorted({(v[1], v[2]) for v in todo}):
        group = [v for v in todo if (v[1], v[2]) == (h, w)]
        clips = {v[0]: [] for v in group}
        for i in range(n_clips):
            frames = render(h, w, SOURCE_FPS, seed=i)  # one scene, re-encoded at each rate and interval
            for name, _, _, fps, gop, tune, preset in group:
                clips[name].append(write_mp4(frames[:: SOURCE_FPS // fps], fps=fps, gop=gop, tune=tune,
                                             preset=preset))
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


@contextlib.contextmanager
def no_skip():
    """Our PyAV reader with its non-reference skipping off (the constant tests/test_data_decode_skip.py
    flips too): the same runs of packets, every picture decoded, to show what the skip buys."""
    saved, video._SKIP_UNSAMPLED = video._SKIP_UNSAMPLED, "DEFAULT"
    try:
        yield
    finally:
        video._SKIP_UNSAMPLED = saved


DECODERS = {"pyav": ("pyav", contextlib.nullcontext), "pyav no skip": ("pyav", no_skip),
            "decord": ("decord", contextlib.nullcontext)}


def decode_rates(files: list[Path], repeats: int) -> dict[str, float]:
    """Clips per CPU-second decoding 8 randomly sampled frames, one thread, for each of ``DECODERS``;
    they take turns clip by clip so that a change in the machine's load hits them alike. Each decodes
    a clip twice in a row and only the second is timed: measured right after another decoder (decord
    above all), a decoder ran a few per cent slower, which a fixed order turned into a bias."""
    data = [f.read_bytes() for f in files]
    spent = dict.fromkeys(DECODERS, 0.0)
    for r in range(repeats):
        for i, mp4 in enumerate(data):
            for name, (backend, setting) in DECODERS.items():
                with setting():
                    read_video(mp4, 8, "random", backend=backend, rng=r * 1000 + i)
                    start = cpu_seconds()
                    read_video(mp4, 8, "random", backend=backend, rng=r * 1000 + i)
                    spent[name] += cpu_seconds() - start
    return {name: repeats * len(data) / spent[name] for name in DECODERS}


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


def steady(make_iter, samples: int, batch_size: int, workers: int) -> np.ndarray:
    """(clips, CPU seconds, wall seconds) net of start-up: a long pass minus a short one."""
    short = batch_size * max(1, workers)
    cpu_s, wall_s = run_loader(lambda: make_iter(short), short)
    cpu_l, wall_l = run_loader(lambda: make_iter(samples), samples)
    return np.array([samples - short, cpu_l - cpu_s, wall_l - wall_s])


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
    parser.add_argument("--loader-clips", nargs="+", default=[X264_DEFAULT[0], CURATED],
                        help="storage variants the full path runs on (names as printed in part 1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="DataLoader workers per measurement")
    parser.add_argument("--backend", default="auto", help="decoder of our path: auto, decord, pyav")
    parser.add_argument("--rounds", type=int, default=2, help="turns each loader path takes in part 2")
    parser.add_argument("--skip-grid", action="store_true", help="leave out part 1 (the storage grid)")
    args = parser.parse_args()
    if args.samples <= 2 * args.batch_size or args.samples % args.batch_size:
        parser.error(f"--samples must be a multiple of --batch-size above the short pass of 2 batches, "
                     f"got {args.samples}")
    torch.set_num_threads(1)  # one core per process, as in DataLoader workers
    out = Path(args.out)
    t0 = time.time()
    variants = make_clips(out, args.clips)
    unknown = [name for name in args.loader_clips if name not in variants]
    if unknown:
        parser.error(f"--loader-clips: unknown variants {unknown}; choose from {sorted(variants)}")
    print(f"clips ready in {time.time() - t0:.0f} s; load average {_load()}")

    grid = {}
    if not args.skip_grid:
        print("\n1. decode 8 random frames of a 10 s 256p clip, one thread: clips per CPU-second (KB per clip)")
        print(f"{'storage':36s} {'pyav':>7s} {'no skip':>7s} {'decord':>7s} {'pyav/decord':>11s} {'KB':>6s}")
        for name in [*(v[0] for v in STORAGE_GRID), X264_DEFAULT[0], CURATED]:
            files = sorted((variants[name] / "files").glob("*.mp4"))
            kb = np.mean([f.stat().st_size for f in files]) / 1024
            rates = decode_rates(files, repeats=5)
            grid[name] = {**rates, "kb": kb}
            print(f"{name:36s} {rates['pyav']:7.1f} {rates['pyav no skip']:7.1f} {rates['decord']:7.1f} "
                  f"{rates['pyav'] / rates['decord']:10.2f}x {kb:6.0f}", flush=True)

    print(f"\n2. full path, batches of {args.batch_size} x 8 x 3 x 224 x 224, steady state: clips per CPU-second | "
          "wall clips/s; official = decord get_batch + torchvision transforms")
    results = []
    for name in args.loader_clips:
        for workers in args.workers:
            totals = {path: np.zeros(3) for path in ("ours", "ours_f32", "official")}
            for _ in range(args.rounds):  # the paths take turns, so a change in load hits them alike
                totals["ours"] += ours(variants[name], workers, args.samples, args.batch_size, args.backend, False)
                totals["ours_f32"] += ours(variants[name], workers, args.samples, args.batch_size, args.backend,
                                           True)
                totals["official"] += official(variants[name], workers, args.samples, args.batch_size)
            row = {"clips": name, "workers": workers,
                   **{path: (n / cpu, n / wall) for path, (n, cpu, wall) in totals.items()}}
            row["ratio"] = row["ours"][0] / row["official"][0]
            row["ratio_f32"] = row["ours_f32"][0] / row["official"][0]
            results.append(row)
            print(f"{name:30s} workers {workers}: ours {row['ours'][0]:5.1f} | {row['ours'][1]:5.1f}   "
                  f"ours f32 {row['ours_f32'][0]:5.1f} | {row['ours_f32'][1]:5.1f}   "
                  f"official {row['official'][0]:5.1f} | {row['official'][1]:5.1f}   "
                  f"ratio {row['ratio']:4.2f}x (f32 {row['ratio_f32']:4.2f}x)", flush=True)
    for row in results:
        if row["clips"] == X264_DEFAULT[0]:
            print(f"\nours / official on {X264_DEFAULT[0]} clips, {row['workers']} worker(s): {row['ratio']:.2f}x "
                  f"per CPU-second (target >= 1.5x)")
    (out / "results.json").write_text(json.dumps({"decode_grid": grid, "loader": results}, indent=1))
    print(f"\nload average now {_load()}; results in {out / 'results.json'}")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
