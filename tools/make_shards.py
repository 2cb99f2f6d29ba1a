#!/usr/bin/env python
"""Write training shards (webdataset tars + sizes.json) from a clip table or a subset of it.

    python tools/make_shards.py --table /data/clips --out /data/shards/internvid_10m_flt
    python tools/make_shards.py --table subset_flt.parquet --clips-dir /data/clips --out shards/ --max-samples 2000
"""

import argparse

from viclip.curation.writer import make_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", required=True, help="parquet clip tables or stage directories")
    parser.add_argument("--clips-dir", help="stage directory holding the clip tars (default: the table's directory)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-samples", type=int, default=1000, help="samples per tar")
    parser.add_argument("--max-bytes", type=int, default=1 << 30, help="bytes per tar")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--allow-empty-captions", action="store_true")
    args = parser.parse_args()
    sizes = make_shards(args.table, args.clips_dir, args.out, args.max_samples, args.max_bytes,
                        args.caption_column, args.allow_empty_captions)
    print(f"{sum(sizes.values())} samples in {len(sizes)} tars under {args.out}")


if __name__ == "__main__":
    main()
