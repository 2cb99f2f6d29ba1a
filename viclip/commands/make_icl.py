"""Interleaved video-text sequences (InternVid-ICL) from captioned clip tables, as JSON lines.

    viclip-curate make-icl --input captioned/ --format a --out icl_a.jsonl
    viclip-curate make-icl --input captioned/ --format b --asr transcripts.jsonl --out icl_b.jsonl
    viclip-curate make-icl --input captioned/ --format c --max-clips 16 --out icl_c.jsonl

(a) one video's clips in temporal order, each video followed by its caption, each video dropped
with probability --drop-prob (its caption stays); (b) (a) plus each clip's ASR text (segments with
video_id, start, end, text in JSON lines or parquet); (c) two videos' (a) sequences concatenated.
Video items name their tar (under --clips-dir, default: where the input stage's clips are) and key.
A report is written beside the output as OUT.json.
"""

from __future__ import annotations

from pathlib import Path

from viclip.commands import StageParser, one_line_errors
from viclip.curation.cli import add_options, from_args
from viclip.curation.interleave import FORMATS, ASRIndex, ICLConfig, build_icl
from viclip.curation.stage_dir import clips_dir_of


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="captioned clip tables: stage directories or parquet")
    parser.add_argument("--out", required=True, help="output .jsonl")
    add_options(parser, ICLConfig, "sequences", choices={"format": FORMATS})
    parser.add_argument("--asr", help="ASR segments (format b): .jsonl or .parquet with video_id, start, end, text")
    parser.add_argument("--clips-dir", help="where the tars are (default: from the first input stage directory)")
    a = parser.parse_args()
    clips_dir = a.clips_dir
    if clips_dir is None and Path(a.input[0]).is_dir():
        clips_dir = clips_dir_of(Path(a.input[0]))
    report = build_icl(a.input, a.out, from_args(ICLConfig, a), clips_dir=clips_dir,
                       asr=ASRIndex.load(a.asr) if a.asr else None)
    skipped = {"too few clips": report.too_few_clips, "no caption": report.no_caption, "unpaired": report.unpaired}
    said = ", ".join(f"{why} {n}" for why, n in skipped.items() if n) or "none"
    print(f"{report.sequences} sequences from {report.videos} videos ({report.clips} clips, {report.videos_dropped} "
          f"clip videos left out) -> {a.out}; skipped: {said}; report in {a.out}.json")


if __name__ == "__main__":
    main()
