"""Build a training subset from clip tables (parquet files or stage directories) into one parquet file.

    viclip-curate build-subset --input scored/ --rule div --num 10647458 --out internvid_10m_div.parquet
    viclip-curate build-subset --input scored/ --rule flt --num 10000000 --out internvid_10m_flt.parquet
    viclip-curate build-subset --input scored/ --rule aes --out internvid_aes.parquet
    viclip-curate build-subset --input scored/ --rule random --num 50000000 --seed 0 --out internvid_50m.parquet
    # the official div_sampling.py on an annotation table keyed by file name (no status column: every row):
    viclip-curate build-subset --input anno.parquet --rule div --num N --source-column video --source-prefix 11 \
        --out d.parquet

Rows come out in input order; ``subset_rank`` gives the rule's order (sort by it for the official list).
Only rows with status 'kept' are pooled (--no-kept-only: every row). A report (counts, threshold,
spec) is written beside the output as OUT.json.
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_options, add_progress_arg, from_args
from viclip.curation.subsets import RULES, SubsetSpec, build_subset


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="clip tables: parquet files or stage directories")
    parser.add_argument("--out", required=True, help="output parquet file")
    add_options(parser, SubsetSpec, "subset rule", choices={"rule": RULES})
    add_progress_arg(parser)
    args = parser.parse_args()
    report = build_subset(args.input, args.out, from_args(SubsetSpec, args), progress=not args.no_progress)
    rule = report.spec.get("rule")
    print(f"{report.selected} of {report.pool} kept clips selected by rule {rule} ({report.rows} rows read) -> "
          f"{args.out}; report in {args.out}.json")


if __name__ == "__main__":
    main()
