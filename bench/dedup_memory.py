"""Peak memory of dedup-clips' flags step given SemDeDup's pairs, against holding every vector at once.

    python bench/dedup_memory.py --rows 800000 1600000        # synthetic 768-d shards of 25K rows
    python bench/dedup_memory.py --rows 400000 --whole         # also load every vector (the exact method's need)

Each measurement runs in a fresh process and prints its peak resident memory above what it held after
the imports, sampled every 10 ms from /proc (Linux; ``ru_maxrss`` would carry over the parent's peak
through fork and exec); the difference between two row counts is the per-row cost (the vectors of one
shard at a time are a constant). The shards are written once under --workdir and reused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from viclip.testing.embeddings import write_embedding_shards


def measure(mode: str, root: Path) -> None:
    """One measurement in this process: ``flags`` (pairs given) or ``whole`` (every vector loaded)."""
    from viclip.curation.dedup import find_duplicates_and_leaks, load_embeddings
    from viclip.curation.stage_configs import DedupConfig

    base = peak = resident_mib()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, resident_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    if mode == "flags":
        find_duplicates_and_leaks([str(root)], root.with_suffix(".flags.parquet"), DedupConfig(keep_by="aesthetic"),
                                  np.zeros((0, 2), dtype=np.int64))
    else:
        load_embeddings([str(root)])
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    print(f"{mode:5s} {root.name}: peak RSS above imports {max(peak, resident_mib()) - base:,.0f} MiB, {seconds:.1f} s",
          flush=True)


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20  # resident pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[800_000, 1_600_000])
    parser.add_argument("--shard-rows", type=int, default=25_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--whole", action="store_true", help="also load every vector at once")
    parser.add_argument("--workdir", default="/tmp/viclip_dedup_memory")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], Path(args.measure[1]))
        return
    for rows in args.rows:
        root = Path(args.workdir) / f"{rows}x{args.dim}"
        if not root.exists():  # written aside and renamed: an interrupted run leaves no half corpus here
            partial = root.with_name(root.name + ".partial")
            rng = np.random.default_rng(0)
            write_embedding_shards(partial, rng.standard_normal((rows, args.dim), dtype=np.float32),
                                   args.shard_rows, aesthetic=rng.uniform(3, 7, rows))
            partial.rename(root)
        for mode in ("flags", "whole") if args.whole else ("flags",):
            subprocess.run([sys.executable, __file__, "--measure", mode, str(root)], check=True)


if __name__ == "__main__":
    main()
