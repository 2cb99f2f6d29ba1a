"""Near-duplicate clips and evaluation leakage from embed-clips output, as a flags table build-subset can exclude.

    viclip-curate embed-clips --input scored/ --out emb/train --checkpoint ViClip-InternVid-10M-FLT.pth
    viclip-curate embed-clips --input /data/eval/msrvtt/videos --out emb/msrvtt --checkpoint ...
    viclip-curate dedup-clips --input emb/train --out flags.parquet --keep-by aesthetic \
        --eval-annotations /data/eval/k400/test.csv /data/eval/anet/val.json --eval-embeddings emb/msrvtt
    viclip-curate build-subset --input scored/ --rule aes --exclude flags.parquet --out aes_clean.parquet

Flags per clip: duplicate_group, duplicate_of (the kept clip), eval_source (the annotation file listing its
YouTube id), eval_video and eval_similarity (the nearest evaluation video within --eval-threshold), exclude.
Cosines are exact (blocked matrix products; --device cuda for a GPU). A report is written as OUT.json.
--method semdedup searches inside k-means clusters instead (viclip/curation/semdedup.py: for millions of clips;
resumable from --work-dir, clusters over --workers processes and torchrun ranks, or as Ray tasks with
--engine ray); the flags table is the same.
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_engine_args, add_options, engine_from_args, from_args
from viclip.curation.stage_configs import KEEP_BY, DedupConfig, SemDedupConfig
from viclip.errors import ConfigError


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="embed-clips output directories or parquet shards")
    parser.add_argument("--out", required=True, help="output flags table (parquet)")
    parser.add_argument("--method", choices=("exact", "semdedup"), default="exact",
                        help="exact: every pair; semdedup: pairs inside k-means clusters (default %(default)s)")
    add_options(parser, DedupConfig, "deduplication and leakage", choices={"keep_by": KEEP_BY})
    add_options(parser, SemDedupConfig, "--method semdedup")
    add_engine_args(parser)
    args = parser.parse_args()
    cfg, pairs = from_args(DedupConfig, args), None
    engine = engine_from_args(args) if args.engine != "local" else None  # local: this process and --workers
    if engine is not None and args.method != "semdedup":
        raise ConfigError(f"--engine {args.engine} runs the clusters of --method semdedup; the exact method "
                          "runs in this process (on --device)")
    # after parsing: torch and the search load slowly (--help is fast)
    from viclip.curation.dedup import find_duplicates_and_leaks

    if args.method == "semdedup":
        from viclip.curation.semdedup import semantic_pairs
        from viclip.distributed import init_from_env, pick_device, world

        device = pick_device(cfg.device)  # each torchrun rank on its own GPU
        init_from_env(device)
        sem = from_args(SemDedupConfig, args)
        work_dir = sem.work_dir or f"{args.out}.semdedup"
        pairs, sem_report = semantic_pairs(args.input, cfg.threshold, sem, work_dir, cfg.block_size, str(device),
                                           engine)
        if world()[0] != 0:
            return
        print(f"semdedup: {sem_report['rows']} clips in {sem_report['clusters']} clusters (largest "
              f"{sem_report['largest_cluster']}), {sem_report['compared']} pairs compared, {sem_report['pairs']} "
              f"near-duplicate pairs; {sum(sem_report['seconds'].values()):.1f} s; work in {work_dir}")
    report = find_duplicates_and_leaks(args.input, args.out, cfg, pairs)
    r = report
    print(f"{r.clips} clips ({r.non_finite} without a finite embedding left out): {r.duplicates_removed} duplicates "
          f"in {r.duplicate_groups} groups, {r.eval_source_overlap} share a source with an evaluation file, "
          f"{r.eval_near} near an evaluation video; {r.excluded} excluded -> {args.out}; report in {args.out}.json")


if __name__ == "__main__":
    main()
