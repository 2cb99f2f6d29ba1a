"""Plot dataset statistics of a clip table (paper Figures 3-4 style) and print/save a summary table.

    viclip-curate plot-stats --input /data/clips --out /data/clips/stats
    viclip-curate plot-stats --input subset_flt.parquet --out stats_flt
"""

from viclip.commands import StageParser, one_line_errors
from viclip.curation.stats import format_summary, plot_stats, summarize
from viclip.curation.table import read_tables


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="parquet clip tables or stage directories")
    parser.add_argument("--out", required=True, help="folder for the PNGs and summary.json/summary.txt")
    args = parser.parse_args()
    table = read_tables(args.input)
    paths = plot_stats(table, args.out)
    print(format_summary(summarize(table)))
    print(f"\n{len(paths)} figures and summary.txt/summary.json in {args.out}")


if __name__ == "__main__":
    main()
