"""Near-duplicate search: the exact search against SemDeDup (k-means clusters) on the same generated embeddings.

    .venv/bin/python bench/similarity_search.py                       # N = 1M, 768-d (ViT-L/14), spill 1 and 2
    .venv/bin/python bench/similarity_search.py --num 200000 --queries 4096 --device cuda
    .venv/bin/python bench/similarity_search.py --num 100000 --spill 2 --faiss   # faiss's exact range search too

Embeddings are clustered like real CLIP ones (viclip.testing.embeddings: concept centres plus spread) with
``--planted`` near-duplicate pairs at cosines spread over [threshold, 1], each copy far from its original.

- **Exact** (viclip.curation.dedup.similar_pairs): it costs N^2/2 dot products, so the whole corpus is not
  searched: ``--queries`` rows are searched against all N, and the corpus time is extrapolated as
  N/2 / (rows/s). With ``--faiss``, faiss's exact IndexFlatIP range search runs on the same rows too.
- **SemDeDup** (viclip.curation.semdedup.semantic_pairs, the whole corpus, from parquet shards in a temporary
  directory, as ``dedup-clips --method semdedup`` runs it): its time per phase, the recall of the planted
  pairs, every pair found checked against the threshold, the speed-up over the extrapolated exact time.
- **Projection** to ``--project`` rows from the measured rates: k-means and assignment scale with the rows
  times k (k = sqrt(N (spill - 1/2)), the default), the search with the pairs compared,
  N^2 / k (spill - 1/2) times the imbalance measured here; N workers (GPUs, nodes) divide the assignment
  and search, not the k-means training.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from viclip.curation.dedup import similar_pairs
from viclip.curation.semdedup import auto_clusters, semantic_pairs
from viclip.curation.stage_configs import SemDedupConfig
from viclip.testing.embeddings import clustered_embeddings, write_embedding_shards


def best_of(repeats: int, search, device: str) -> tuple[float, set[tuple[int, int]]]:
    """Best time of ``repeats`` runs (on a shared machine the load changes by the minute) and what it found."""
    best, found = float("inf"), set()
    for _ in range(repeats):
        start = time.perf_counter()
        found = search()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, found


def exact_rate(args: argparse.Namespace, vectors: torch.Tensor, planted: np.ndarray) -> float:
    """Rows/s of the exact search over ``--queries`` rows; faiss's on the same rows with ``--faiss``."""
    on_device = vectors.to(args.device)
    searches = {"exact blocked matmul (similar_pairs)": lambda: set(map(tuple, similar_pairs(
        on_device, args.threshold, args.block_size, args.device, rows=(0, args.queries)).tolist()))}
    if args.faiss:
        import faiss

        def faiss_search() -> set[tuple[int, int]]:
            index = faiss.IndexFlatIP(args.dim)  # built inside the timing, as a dedup run would
            index.add(vectors.numpy())
            lims, _, ids = index.range_search(np.ascontiguousarray(vectors[:args.queries].numpy()), args.threshold)
            return {(q, int(j)) for q in range(args.queries) for j in ids[lims[q]:lims[q + 1]] if j > q}

        searches["faiss IndexFlatIP range_search"] = faiss_search
    expected = {tuple(p) for p in planted.tolist() if p[0] < args.queries}
    rates = {}
    for name, search in searches.items():
        seconds, found = best_of(args.repeats, search, args.device)
        if not expected <= found:
            raise SystemExit(f"{name} missed planted pairs: {sorted(expected - found)[:4]}")
        rates[name] = args.queries / seconds
        print(f"{name}: {args.queries} rows vs {args.num} in {seconds:.2f} s (best of {args.repeats}) = "
              f"{rates[name]:.1f} rows/s, {args.queries * args.num * args.dim * 2 / seconds / 1e9:.1f} GFLOP/s; "
              f"whole corpus extrapolated (N/2 row-equivalents) {args.num / 2 / rates[name] / 3600:.2f} h; "
              f"found the {len(expected)} planted pairs of these rows")
    return rates["exact blocked matmul (similar_pairs)"]


def projection(report: dict, num: int, target: int, spill: int, workers: int) -> str:
    """Hours for ``target`` rows on ``workers`` like the one measured, scaled from the measured phases: reading
    the shards with the rows, k-means training with k^2 (k * sample_per_cluster rows times k centroids),
    assignment with rows * k, the search with the pairs compared."""
    k, k_target = report["clusters"], auto_clusters(target, spill)
    s, rows = report["seconds"], target / num
    ideal = num * num / k * (spill - 0.5)
    compared = report["compared"] / ideal * target * target / k_target * (spill - 0.5)  # the imbalance kept
    kmeans = s["kmeans_read"] * rows + (s["kmeans"] - s["kmeans_read"]) * (k_target / k) ** 2  # on one worker
    assign = (s["assign_read"] * rows + (s["assign"] - s["assign_read"]) * rows * k_target / k) / workers
    search = s["search"] * compared / report["compared"] / workers
    return (f"{target / 1e6:.0f}M rows, k={k_target}, {workers} worker(s): k-means {kmeans / 3600:.1f} h + assignment "
            f"{assign / 3600:.1f} h + search {search / 3600:.1f} h ({compared:.2e} pairs) = "
            f"{(kmeans + assign + search) / 3600:.1f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1_000_000, help="embeddings in the corpus")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--concepts", type=int, default=0, help="concept centres (default num / 500)")
    parser.add_argument("--queries", type=int, default=1024, help="rows the exact search is timed on")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--planted", type=int, default=1000, help="near-duplicate pairs, cosines over [threshold, 1]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the exact search; the best is shown")
    parser.add_argument("--faiss", action="store_true", help="also time faiss's exact range search")
    parser.add_argument("--spill", type=int, nargs="+", default=[1, 2], help="SemDeDup runs, one per spill")
    parser.add_argument("--clusters", type=int, default=0, help="SemDeDup's k (default sqrt(N (spill - 1/2)))")
    parser.add_argument("--workers", type=int, default=1, help="SemDeDup's search processes")
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    parser.add_argument("--project", type=int, nargs="+", default=[234_000_000], help="rows to project to")
    parser.add_argument("--project-workers", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    if args.faiss and (importlib.util.find_spec("faiss") is None or args.device != "cpu"):
        parser.error("--faiss needs faiss-cpu installed and --device cpu")
    started = time.perf_counter()
    vectors, planted = clustered_embeddings(args.num, args.dim, args.concepts or max(1, args.num // 500),
                                            args.planted, args.threshold)
    # the exact search is timed on the first rows: move planted originals there, so it has pairs to find
    first = planted[:max(1, args.queries // 4), 0]
    order = np.concatenate([first, np.setdiff1d(np.arange(args.num), first)])
    vectors = vectors[torch.from_numpy(order)]
    planted = np.sort(np.argsort(order)[planted], axis=1)
    print(f"corpus: {args.num} x {args.dim} float32 ({vectors.numel() * 4 / 2**30:.2f} GiB) clustered, "
          f"{len(planted)} planted pairs, generated in {time.perf_counter() - started:.1f} s; "
          f"{torch.get_num_threads()} CPU threads; device {args.device}")
    exact_hours = args.num / 2 / exact_rate(args, vectors, planted) / 3600
    truth = {tuple(p) for p in planted.tolist()}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "emb").mkdir()
        write_embedding_shards(Path(tmp, "emb"), vectors.numpy(), args.rows_per_shard)
        for spill in args.spill:
            cfg = SemDedupConfig(clusters=args.clusters, spill=spill, workers=args.workers)
            start = time.perf_counter()
            pairs, report = semantic_pairs([Path(tmp, "emb")], args.threshold, cfg, Path(tmp, f"work{spill}"),
                                           args.block_size, args.device)
            seconds = time.perf_counter() - start
            found = set(map(tuple, pairs.tolist()))
            cosines = (vectors[pairs[:, 0]] * vectors[pairs[:, 1]]).sum(1) if len(pairs) else torch.zeros(0)
            below = int((cosines < args.threshold - 1e-6).sum())
            print(f"SemDeDup spill {spill}, k={report['clusters']} (clusters of {report['mean_cluster']:.0f} "
                  f"rows on average, largest {report['largest_cluster']}): {seconds:.1f} s "
                  f"(k-means {report['seconds']['kmeans']:.1f}, assignment {report['seconds']['assign']:.1f}, "
                  f"search {report['seconds']['search']:.1f}); recall of planted pairs "
                  f"{len(truth & found) / len(truth):.4f} ({len(truth & found)}/{len(truth)}); {len(found)} pairs, "
                  f"{below} under the threshold; pairs compared {report['compared']:.3e} = "
                  f"{report['compared'] / (args.num * (args.num - 1) / 2):.4f} of the exact search's; "
                  f"speed-up over the exact extrapolation {exact_hours * 3600 / seconds:.1f}x")
            for target in args.project:
                for workers in args.project_workers:
                    print("  projection: " + projection(report, args.num, target, spill, workers))
            if spill == args.spill[-1]:
                print("  (workers are copies of this machine's measured rates: a GPU's are measured by running "
                      "this bench with --device cuda there)")


if __name__ == "__main__":
    main()
