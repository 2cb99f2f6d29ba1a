"""Near-duplicate clips and evaluation leakage from embed-clips output, as a flags table build-subset can exclude.

    viclip-curate embed-clips --input scored/ --out emb/train --checkpoint ViClip-InternVid-10M-FLT.pth
    viclip-curate embed-clips --input /data/eval/msrvtt/videos --out emb/msrvtt --checkpoint ...
    viclip-curate dedup-clips --input emb/train --out flags.parquet --keep-by aesthetic \
        --eval-annotations /data/eval/k400/test.csv /data/eval/anet/val.json --eval-embeddings emb/msrvtt
    viclip-curate build-subset --input scored/ --rule aes --exclude flags.parquet --out aes_clean.parquet

Flags per clip: duplicate_group, duplicate_of (the kept clip), eval_source (the annotation file listing its
YouTube id), eval_video and eval_similarity (the nearest evaluation video within --eval-threshold), exclude.
Cosines are exact (blocked matrix products; --device cuda for a GPU). A report is written as OUT.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from viclip.commands import one_line_errors
from viclip.curation.cli import add_options, from_args
from viclip.curation.dedup import KEEP_BY, DedupConfig, find_duplicates_and_leaks


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="embed-clips output directories or parquet shards")
    parser.add_argument("--out", required=True, help="output flags table (parquet)")
    add_options(parser, DedupConfig, "deduplication and leakage", choices={"keep_by": KEEP_BY})
    args = parser.parse_args()
    report = find_duplicates_and_leaks(args.input, args.out, from_args(DedupConfig, args))
    print(json.dumps({k: v for k, v in asdict(report).items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
