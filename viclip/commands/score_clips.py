"""Aesthetic and clip-caption similarity scores for the clips of a finished stage (usually captioned).

    viclip-curate score-clips --input captioned/ --out scored/ \
        --clip-weights /models/vit_l14_openai.bin --aesthetic-head /models/sac+logos+ava1-l14-linearMSE.pth \
        --viclip-checkpoint /models/ViClip-InternVid-10M-FLT.pth
    # frame-averaged CLIP similarity instead of ViCLIP; no aesthetic score:
    viclip-curate score-clips --input captioned/ --out scored/ --similarity clip --clip-weights W.bin

Adds aesthetic (max over --aesthetic-frames frames), aesthetic_frames, clip_text_sim (raw cosine)
and clip_text_model to each shard's table; resumable per shard, SLURM arrays via --task/--num-tasks.
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_engine_args, add_options, add_task_args, engine_from_args, from_args
from viclip.curation.stage_configs import DTYPES, SIMILARITY_MODELS, ScoreConfig


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", required=True, help="finished stage directory (clip tables; tars found from it)")
    parser.add_argument("--out", required=True, help="output directory (one table per shard)")
    add_options(parser, ScoreConfig, "scoring", choices={"similarity": SIMILARITY_MODELS, "dtype": DTYPES})
    add_task_args(parser)
    add_engine_args(parser, models=True)
    a = parser.parse_args()
    cfg = from_args(ScoreConfig, a)
    from viclip.curation.quality import run_scoring  # after parsing: it loads torch (--help is fast)

    print(run_scoring(a.input, a.out, cfg, task=a.task, num_tasks=a.num_tasks, progress=not a.no_progress,
                      engine=engine_from_args(a)))


if __name__ == "__main__":
    main()
