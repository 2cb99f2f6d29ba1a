"""Write the synthetic demo data: training shards, a zero-shot set and a retrieval set.

    viclip-curate make-synthetic --out data/synthetic --n-train 2000 --n-eval 200 --size 64
"""

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_options, values_from_args
from viclip.data.synthetic import make_synthetic


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--out", default="data/synthetic", help="output directory (default %(default)s)")
    add_options(parser, make_synthetic, "synthetic data", skip=("out_dir",))
    args = parser.parse_args()
    paths = make_synthetic(args.out, **values_from_args(make_synthetic, args))
    for field, value in vars(paths).items():
        print(f"{field:22s} {value}")


if __name__ == "__main__":
    main()
