"""Multiscale captions for the clips of a finished stage (split_scenes or fetch_clips output).

    viclip-curate caption-clips --input clips/ --out captioned/ \
        --coarse-path /models/blip2-opt-2.7b --summariser-path /models/t5-base
    # a SLURM array: task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT, resumable per shard
    viclip-curate caption-clips --input clips/ --out captioned/ --task 3 --num-tasks 16

Adds caption_coarse (middle frame), frame_captions (at --fine-fps), caption_fine (their summary)
and caption (the summary of both) to each shard's table. Models are local directories or hub ids
already in the Hugging Face cache (checked before any work; nothing is downloaded);
--coarse-kind/--summariser-kind take "package.module:factory" to plug in other models
(docs/captioners.md: factory(spec, device, dtype, batch_size) -> a callable from uint8 frames to one
string each; a module in the working directory is found). Any --fine-* option gives the frames their
own captioner (paper: Tag2Text), its other settings taken from --coarse-*.

    # captions from elsewhere, no models: a file keyed by clip_id (or video_id + start + end)
    viclip-curate caption-clips --input clips/ --out captioned/ --captions my_captions.csv
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_engine_args, add_options, add_task_args, engine_from_args, from_args
from viclip.curation.stage_configs import DTYPES, CaptionConfig


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", required=True, help="finished stage directory (clip tables + tars)")
    parser.add_argument("--out", required=True, help="output directory (one table per shard)")
    parser.add_argument("--captions", help="a file of your own captions (CSV, JSON, JSONL or parquet with 'caption' "
                        "and 'clip_id', or 'video_id', 'start', 'end'): joined instead of running models")
    add_options(parser, CaptionConfig, "captioning", choices={"dtype": DTYPES})
    add_task_args(parser)
    add_engine_args(parser, models=True)
    a = parser.parse_args()
    cfg = from_args(CaptionConfig, a, fallbacks={"fine": "coarse"})
    from viclip.curation.captioning import run_captioning  # after parsing: it loads torch (--help is fast)

    print(run_captioning(a.input, a.out, cfg, task=a.task, num_tasks=a.num_tasks, progress=not a.no_progress,
                         engine=engine_from_args(a), captions=a.captions))


if __name__ == "__main__":
    main()
