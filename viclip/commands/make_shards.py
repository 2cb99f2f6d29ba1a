"""Write training shards (webdataset tars + sizes.json) from a clip table or a subset of it.

    viclip-curate make-shards --input /data/clips --out /data/shards/internvid_10m_flt
    viclip-curate make-shards --input subset_flt.parquet --clips-dir /data/clips --out shards/ --max-samples 2000

--clips-dir is the stage directory holding the clip tars (default: the table's directory). --clips-dir
and --out may be fsspec URLs (s3://bucket/shards): each tar is uploaded whole, sizes.json last; --out
may not be or hold an input. Clips are written in a seeded random order across all sources
(--no-global-shuffle: the table's order). Clips without captions: caption them (caption-clips), join
your own (--captions FILE: CSV/JSON/parquet keyed by clip_id or video_id + start + end), name the
table's column (--caption-column), or write empty captions (--allow-empty-captions).
"""

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_options, values_from_args
from viclip.curation.writer import make_shards


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="parquet clip tables or stage directories")
    parser.add_argument("--out", required=True, help="output directory: a local path or any fsspec URL")
    add_options(parser, make_shards, "shards", skip=("tables", "out_dir"))
    args = parser.parse_args()
    sizes = make_shards(args.input, out_dir=args.out, **values_from_args(make_shards, args))
    print(f"{sum(sizes.values())} samples in {len(sizes)} tars under {args.out} "
          f"(train on them: viclip-train data=shards data.shards={args.out} ...)")


if __name__ == "__main__":
    main()
