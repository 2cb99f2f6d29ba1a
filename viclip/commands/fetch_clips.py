"""Rebuild released InternVid clips from an annotation JSONL: fetch each source once, cut, shard.

    viclip-curate fetch-clips --annotations InternVid-10M-FLT.jsonl --template '/videos/{id}.mp4' --out clips/
    viclip-curate fetch-clips --annotations part.jsonl --id-map ids.tsv --out clips/ --task 0 --num-tasks 8
    viclip-curate fetch-clips --annotations part.jsonl --template 'https://www.youtube.com/watch?v={id}' ...

Clips keep the released caption and scores (Aesthetic_Score -> aesthetic, UMT_Score -> clip_text_sim).
YouTube URLs need the optional extra: pip install 'viclip[fetch]'.
Failed sources (see the 'reason' column) can be redone later by rerunning with --retry-failed.
"""

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_curation_args, add_run_args, config_from_args, run_kwargs


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--annotations", required=True,
                        help="InternVid JSONL (YoutubeID, Start/End_timestamp, Caption)")
    parser.add_argument("--id-map", help="JSON object or TSV/CSV (id, uri) mapping ids to local files or URLs")
    parser.add_argument("--template", help="URI template for ids missing from the map, e.g. '/videos/{id}.mp4'")
    add_run_args(parser)
    add_curation_args(parser, scenes=False)
    args = parser.parse_args()
    from viclip.curation.sources import annotated_sources, read_annotations, read_id_map  # after parsing: --help
    from viclip.curation.stages import run_stage  # stays fast

    id_map = read_id_map(args.id_map) if args.id_map else None
    sources = annotated_sources(read_annotations(args.annotations), id_map, args.template)
    summary = run_stage(sources, cfg=config_from_args(args), **run_kwargs(args))
    print(summary)


if __name__ == "__main__":
    main()
