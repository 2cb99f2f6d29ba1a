"""Candidate source videos from search queries (InternVid's ~6K action phrases), for split-scenes --list.

    viclip-curate collect-sources --queries queries.jsonl --out sources/ \
        --exclude kinetics700/train.csv howto100m_videos.csv internvid_10m_flt.jsonl
    viclip-curate split-scenes --list sources/sources.txt --out clips/

Each query is a YouTube search (yt-dlp, the 'fetch' extra: result metadata only); shards of queries are
resumable (a rerun skips done ones) and split over SLURM tasks (--task/--num-tasks) or Ray (--engine ray).
Once every shard is done the list is written: deduplicated across queries, without the ids of --exclude
files, at most --per-query videos a query. OUT/sources.txt is 'ID<TAB>URL' a line; sources.parquet adds
the query, language and rank of each video; sources.json holds the counts.
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_engine_args, add_options, engine_from_args, from_args
from viclip.curation.stage_configs import CollectConfig


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--queries", required=True, help="the release's queries.jsonl (search_word_id, search_word), "
                                                         "a JSONL of {query, language}, or a text file of queries")
    parser.add_argument("--out", required=True, help="output directory (a local path or an fsspec URL)")
    parser.add_argument("--exclude", nargs="+", default=(), help="files whose YouTube ids are never collected "
                                                                 "(CSV, JSON, JSONL or text: every field is tried)")
    add_options(parser, CollectConfig, "collection")
    parser.add_argument("--task", type=int, default=0, help="array task index (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-tasks", type=int, default=1, help="array size (e.g. $SLURM_ARRAY_TASK_COUNT)")
    add_engine_args(parser)
    args = parser.parse_args()
    # after parsing: it loads torch (--help is fast)
    from viclip.curation.collect import LIST_FILE, REPORT_FILE, collect_sources

    report = collect_sources(args.queries, args.out, from_args(CollectConfig, args), args.exclude,
                             task=args.task, num_tasks=args.num_tasks, engine=engine_from_args(args))
    searched = (f"{report['searched']} queries searched ({report['done_before']} shards done before, "
                f"of {report['shards']})")
    if "list" not in report:
        print(f"{searched}; the source list is written when the other tasks' shards are done")
        return
    n, out = report["list"], args.out.rstrip("/")
    print(f"{searched}; {n['videos']} videos from {n['queries_with_videos']} queries ({n['excluded']} excluded ids, "
          f"{n['duplicates']} duplicates, {n['over_cap']} over --per-query) -> {out}/{LIST_FILE}; "
          f"report in {out}/{REPORT_FILE}")


if __name__ == "__main__":
    main()
