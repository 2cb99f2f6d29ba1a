"""Export a curated subset for text-to-video training: clips as mp4 files and a table trainers read.

    viclip-curate build-subset --input scored/ --rule aes --exclude flags.parquet --out aes.parquet
    viclip-curate export-subset --input aes.parquet --out internvid_aes/ --format csv

Writes OUT/clips/{clip_key}.mp4 and OUT/metadata.csv (path, caption, frames, height, width, fps, aesthetic,
similarity), plus OUT/export.json. For generation, extract clips at viewing quality first: split-scenes or
fetch-clips with --fps 0 --tune '' --keyframe-interval 1 --short-side 720 --crf 18.
"""

from __future__ import annotations

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_options, add_progress_arg, from_args
from viclip.curation.export import FORMATS, ExportConfig, export_subset


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", required=True, help="a subset table (build-subset output)")
    parser.add_argument("--out", required=True, help="output directory (clips/ and the metadata table)")
    add_options(parser, ExportConfig, "export", choices={"format": FORMATS})
    add_progress_arg(parser)
    args = parser.parse_args()
    report = export_subset(args.input, args.out, from_args(ExportConfig, args), progress=not args.no_progress)
    print(f"{report.clips} clips exported ({report.copied} copied by this run) -> {args.out}; "
          f"{len(report.warnings)} warning(s); report in {args.out}/export.json")
    for warning in report.warnings:
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
