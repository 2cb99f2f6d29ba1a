"""Build a training subset from clip tables (parquet files or stage directories) into one parquet file.

    python tools/build_subset.py scored/ --rule div --num 10647458 --out internvid_10m_div.parquet
    python tools/build_subset.py scored/ --rule flt --num 10000000 --out internvid_10m_flt.parquet
    python tools/build_subset.py scored/ --rule aes --out internvid_aes.parquet
    python tools/build_subset.py scored/ --rule random --num 50000000 --seed 0 --out internvid_50m.parquet
    # the official div_sampling.py on an annotation table keyed by file name:
    python tools/build_subset.py anno.parquet --rule div --num N --source-column video --source-prefix 11 --out d.parquet

Rows come out in input order; ``subset_rank`` gives the rule's order (sort by it for the official list).
A report (counts, threshold, spec) is written beside the output as OUT.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from viclip.curation.subsets import RULES, SubsetSpec, build_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="clip tables: parquet files or stage output directories")
    parser.add_argument("--out", required=True, help="output parquet file")
    parser.add_argument("--rule", required=True, choices=RULES)
    parser.add_argument("--num", type=int, help="clips to draw (div, flt, random)")
    parser.add_argument("--seed", type=int, default=42, help="numpy legacy seed (the official DIV uses 42)")
    parser.add_argument("--source-column", default="video_id", help="column naming each clip's source video")
    parser.add_argument("--source-prefix", type=int, help="cut source names to this many characters (official: 11)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="FLT: shortest clip kept")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="FLT: longest clip kept")
    parser.add_argument("--top-fraction", type=float, default=0.3, help="FLT: fraction kept by similarity")
    parser.add_argument("--similarity-column", default="clip_text_sim", help="FLT: the similarity score")
    parser.add_argument("--aesthetic-threshold", type=float, default=4.0, help="Aes: lowest score kept")
    parser.add_argument("--all-rows", action="store_true", help="pool every row, not only status == 'kept'")
    args = parser.parse_args()
    spec = SubsetSpec(rule=args.rule, num=args.num, seed=args.seed, source_column=args.source_column,
                      source_prefix=args.source_prefix, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                      top_fraction=args.top_fraction, similarity_column=args.similarity_column,
                      aesthetic_threshold=args.aesthetic_threshold, kept_only=not args.all_rows)
    report = build_subset(args.inputs, args.out, spec)
    print(json.dumps({k: v for k, v in asdict(report).items() if k != "inputs"}, indent=1))


if __name__ == "__main__":
    main()
