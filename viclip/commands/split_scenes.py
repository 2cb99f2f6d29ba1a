"""Split source videos into scene clips: cuts, still/extreme-dynamics filters, re-encoded clips in shards.

    viclip-curate split-scenes --videos /data/raw --out /data/clips --workers 16
    viclip-curate split-scenes --list sources.txt --out /data/clips --task 3 --num-tasks 100
    viclip-curate split-scenes --videos /data/raw --out /data/clips --detector transnetv2 --transnet-device cuda

--detector: content (PySceneDetect's ContentDetector, the paper's), adaptive, or transnetv2 (sees dissolves
and fades and leaves their frames out of every clip; the transnet extra; docs/detectors.md).

Rerunning the same command resumes: finished shards are skipped, unfinished ones redone. A video that
hangs past its time budget (--budget-base + --budget-factor x its duration) or crashes its worker
becomes a failed row (reason 'timeout' / 'crashed') and the run goes on; add --retry-failed to a
rerun to redo the failed videos of finished shards.
"""

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_curation_args, add_run_args, config_from_args, run_kwargs


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of videos (searched recursively)")
    src.add_argument("--list", help="text file: one 'URI' or 'ID<TAB>URI' per line (local or fsspec URLs)")
    add_run_args(parser)
    add_curation_args(parser)
    args = parser.parse_args()
    from viclip.curation.sources import list_folder, read_file_list  # after parsing: they load torch (--help is fast)
    from viclip.curation.stages import run_stage

    sources = list_folder(args.videos) if args.videos else read_file_list(args.list)
    summary = run_stage(sources, cfg=config_from_args(args), **run_kwargs(args))
    print(summary)


if __name__ == "__main__":
    main()
