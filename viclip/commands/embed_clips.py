"""ViCLIP video and caption embeddings of training shards, clip tables or a folder of videos, as parquet shards.

    viclip-curate embed-clips --input /data/flt/ --out emb/flt --checkpoint ViClip-InternVid-10M-FLT.pth
    torchrun --standalone --nproc_per_node=8 tools/embed_clips.py --input scored/ --out emb/scored \
        --checkpoint ViClip-InternVid-10M-FLT.pth           # each clip once across ranks, bf16 on the GPUs
    viclip-curate embed-clips --input scored/ --out emb/scored --checkpoint ... --engine ray  # actors, a model each
    viclip-curate embed-clips --input /data/eval/msrvtt/videos --out emb/msrvtt --checkpoint ...  # for dedup-clips

One shard per input tar, clip table or --clips-per-shard videos of a folder: {s:05d}.parquet (clip_id,
video_id, aesthetic, video_embedding, text_embedding, similarity, error), then {s:05d}.stats.json (done);
a rerun skips done shards; --task/--num-tasks split the shards over a SLURM array as well; --engine ray
runs them on Ray actors that each load the model once (the same files: a rerun may switch engines).
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_engine_args, add_options, add_task_args, engine_from_args, from_args
from viclip.curation.stage_configs import INPUT_KINDS, EmbedConfig


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True,
                        help="tar shards (directory or brace pattern), clip tables (stage directory or parquet "
                             "files) or a folder of videos (captions from a .txt beside each, when present)")
    parser.add_argument("--out", required=True, help="output directory (parquet shards)")
    add_options(parser, EmbedConfig, "embedding", choices={"input_kind": INPUT_KINDS,
                                                           "precision": ("auto", "fp32", "bf16"),
                                                           "sampling": ("middle", "random")})
    add_task_args(parser)
    add_engine_args(parser, models=True)
    args = parser.parse_args()
    from viclip.embeddings import run_embedding  # after parsing: it loads torch (--help is fast)

    s = run_embedding(args.input, args.out, from_args(EmbedConfig, args), task=args.task, num_tasks=args.num_tasks,
                      progress=not args.no_progress, engine=engine_from_args(args))
    print(f"{s['done']} shards done, {s['skipped']} done before (of {s['shards']}); {s['clips']} clips embedded, "
          f"{s['failed']} failed; output in {args.out}")


if __name__ == "__main__":
    main()
