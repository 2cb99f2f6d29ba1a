"""Time and peak memory of DIV / FLT / Aes / random subsets on a generated clip table.

    python bench/subsets.py                 # 10M rows in 10 parquet shards (a few minutes on 2 cores)
    python bench/subsets.py --rows 1000000  # quick look

The table mimics InternVid's shape: ~33 clips per source video on average (234M clips from 7M
videos), 11-character video ids, durations, similarity and aesthetic scores, a caption column.
Each rule runs in a fresh process; the time is ``build_subset`` alone (imports excluded), the peak
RSS comes from ``wait4`` and is printed with the memory per row above the import baseline, which
is what decides whether a 234M-row table fits in 24 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RUN = """
import sys, time
from viclip.curation.subsets import SubsetSpec, build_subset
rule, num, out, *inputs = sys.argv[1:]
start = time.perf_counter()
report = build_subset(inputs, out, SubsetSpec(rule, num=int(num) if num != "-" else None))
print(time.perf_counter() - start, report.pool, report.selected, report.counts.get("similarity_threshold", ""))
"""
BASELINE = "import numpy, pyarrow, pyarrow.parquet, pyarrow.compute, viclip.curation.subsets"


def generate(out_dir: Path, rows: int, files: int, seed: int = 0) -> list[Path]:
    """``files`` parquet shards with ``rows`` clips in all; clips of one video stay in one shard, in order."""
    rng = np.random.default_rng(seed)
    clips_per_video = rng.geometric(1 / 33, size=rows // 10 + 1000)
    clips_per_video = clips_per_video[: np.searchsorted(np.cumsum(clips_per_video), rows) + 1]
    video = np.repeat(np.arange(len(clips_per_video)), clips_per_video)[:rows]
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype="S1")
    ids = pa.array(rng.choice(alphabet, size=(len(clips_per_video), 11)).view("S11").ravel().astype(str))
    captions = pa.array([f"a person does thing number {i} in a room with some objects" for i in range(1000)])
    paths = []
    for f, part in enumerate(np.array_split(np.arange(rows), files)):
        v = video[part]
        table = pa.table({
            "video_id": ids.take(pa.array(v)),
            "clip_id": pa.array(part.astype(str)),
            "status": pa.array(np.full(len(part), "kept")),
            "duration": rng.lognormal(1.2, 1.0, len(part)),
            "clip_text_sim": rng.normal(0.35, 0.04, len(part)).astype(np.float32),
            "aesthetic": rng.normal(4.8, 0.9, len(part)).astype(np.float32),
            "caption": captions.take(pa.array(rng.integers(0, 1000, len(part)))),
        })
        paths.append(out_dir / f"{f:05d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def measure(code: str, *args: str) -> tuple[float, str]:
    """Peak RSS (GiB) and stdout of ``python -c code args`` in a fresh process."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"subset run failed ({status}): {args}")
    return usage.ru_maxrss / 2**20, out.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--dir", help="where to write the table (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        files = [str(p) for p in generate(tmp, args.rows, args.files)]
        size = sum(os.path.getsize(p) for p in files) / 2**20
        seconds = time.perf_counter() - start
        print(f"generated {args.rows:,} rows in {len(files)} files ({size:.0f} MiB) in {seconds:.1f} s")
        base, _ = measure(BASELINE)
        print(f"baseline process (imports only, torch included through viclip): {base:.2f} GiB peak RSS")
        div_num = args.rows * 10_647_458 // 234_000_000  # the official DIV ratio
        runs = [("div", div_num), ("flt", div_num // 2), ("aes", None), ("random", args.rows // 2)]
        print(f"{'rule':8s} {'N':>11s} {'seconds':>8s} {'peak GiB':>9s} {'bytes/row':>10s}  pool selected [threshold]")
        for rule, num in runs:
            out = str(tmp / f"{rule}.parquet")
            peak, text = measure(RUN, rule, str(num) if num is not None else "-", out, *files)
            seconds, _, text = text.partition(" ")
            seconds, per_row = float(seconds), (peak - base) * 2**30 / args.rows
            print(f"{rule:8s} {num if num is not None else '-':>11} {seconds:8.1f} {peak:9.2f} {per_row:10.0f}  {text}")


if __name__ == "__main__":
    main()
