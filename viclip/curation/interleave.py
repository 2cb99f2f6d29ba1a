"""Interleaved video-text sequences for in-context learning (InternVid-ICL: paper section 3.4, appendix D).

- (a) the clips of one source video in temporal order, each a video followed by its caption; each
  clip's video is dropped with probability ``drop_prob`` (0.3), leaving its caption, for a richer
  text context than plain video-caption pairs;
- (b) as (a), with each clip's ASR transcript after its caption (when it has one);
- (c) the (a) sequences of two source videos concatenated, a dialogue about several videos.

One JSON object per line: ``{"id", "format", "videos", "sequence": [items]}`` where an item is
``{"type": "video", "clip_id", "tar", "key", "start", "end"}`` (a clip in the shards: member
``{key}.mp4`` of ``tar``) or ``{"type": "text", "source": "caption" | "asr", "clip_id", "text"}``. The drops
come from a generator seeded by (seed, source video), so a video's (a)/(b) sequence does not depend
on which other videos or files are processed alongside it; (c) pairs videos within each table file
(a shard of whole source videos), shuffled by (seed, file index).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.table import require_text_columns, table_files
from viclip.data.tars import stable_hash64
from viclip.errors import ConfigError, DataError

FORMATS = ("a", "b", "c")
CLIP_COLUMNS = ("video_id", "clip_id", "status", "start", "end", "caption", "clip_tar", "clip_key")


@dataclass(frozen=True)
class ICLConfig:
    """One ICL format and its sampling (recorded in the report)."""

    format: str = "a"
    drop_prob: float = 0.3       # chance that a clip's video is left out (its caption stays)
    min_clips: int = 2           # a video with fewer captioned clips gives no sequence
    max_clips: int | None = None  # longer videos are cut into consecutive windows of this many clips
    seed: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format: ICL format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if not 0 <= self.drop_prob < 1:
            raise ConfigError(f"--drop-prob must be in [0, 1), got {self.drop_prob}")
        if self.min_clips < 1 or (self.max_clips is not None and self.max_clips < self.min_clips):
            raise ConfigError(f"need 1 <= --min-clips <= --max-clips, got {self.min_clips}, {self.max_clips}")


@dataclass
class ICLReport:
    config: dict
    sequences: int = 0
    videos: int = 0               # source videos used
    clips: int = 0                # clips placed (with or without their video)
    videos_dropped: int = 0       # clip videos left out (caption kept)
    too_few_clips: int = 0        # source videos skipped
    no_caption: int = 0           # kept clips skipped for want of a caption
    unpaired: int = 0             # format (c): a video left without a partner in its file
    inputs: list[str] = field(default_factory=list)


class ASRIndex:
    """Time-stamped transcript segments (``video_id, start, end, text``) looked up by clip span."""

    def __init__(self, table: pa.Table, source: str = "<asr>") -> None:
        missing = [c for c in ("video_id", "start", "end", "text") if c not in table.column_names]
        if missing:
            raise DataError(f"{source}: ASR segments need columns {missing}")
        table = table.sort_by([("video_id", "ascending"), ("start", "ascending")])
        self.start = pc.cast(table.column("start"), pa.float64()).to_numpy()
        self.end = pc.cast(table.column("end"), pa.float64()).to_numpy()
        self.text = table.column("text")
        ids = table.column("video_id").to_numpy(zero_copy_only=False)
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
        bounds = np.r_[first, len(ids)]
        self.ranges = {ids[a]: (int(a), int(b)) for a, b in pairwise(bounds)}

    @classmethod
    def load(cls, path: str | os.PathLike) -> ASRIndex:
        """A parquet table or JSON lines of segments."""
        path = Path(path)
        if path.suffix == ".parquet":
            return cls(pq.read_table(path), str(path))
        import pyarrow.json as pj

        return cls(pj.read_json(path), str(path))

    def text_for(self, video_id: str, start: float, end: float) -> str:
        """The segments that overlap ``[start, end)``, in time order, joined by spaces."""
        a, b = self.ranges.get(video_id, (0, 0))
        hits = np.arange(a, b)[(self.start[a:b] < end) & (self.end[a:b] > start)]
        return " ".join(t.strip() for t in self.text.take(pa.array(hits, pa.int64())).to_pylist() if t and t.strip())


def _video_item(clip: dict, clips_dir: Path | None) -> dict:
    tar = str(clips_dir / clip["clip_tar"]) if clips_dir is not None else clip["clip_tar"]
    return {"type": "video", "clip_id": clip["clip_id"], "tar": tar, "key": clip["clip_key"],
            "start": clip["start"], "end": clip["end"]}


def video_sequence(clips: Sequence[dict], rng: np.random.Generator, cfg: ICLConfig, report: ICLReport,
                   clips_dir: Path | None = None, asr: ASRIndex | None = None) -> list[dict]:
    """Format (a) (or (b) with ``asr``) for one source video's clips, already in temporal order."""
    drop = rng.random(len(clips)) < cfg.drop_prob
    items: list[dict] = []
    for clip, dropped in zip(clips, drop):
        if not dropped:
            items.append(_video_item(clip, clips_dir))
        items.append({"type": "text", "source": "caption", "clip_id": clip["clip_id"], "text": clip["caption"]})
        if asr is not None:
            text = asr.text_for(clip["video_id"], clip["start"], clip["end"])
            if text:
                items.append({"type": "text", "source": "asr", "clip_id": clip["clip_id"], "text": text})
    report.clips += len(clips)
    report.videos_dropped += int(drop.sum())
    return items


def _videos(table: pa.Table, report: ICLReport, seen: set[str], path: Path) -> Iterator[tuple[str, list[dict]]]:
    """(video_id, captioned kept clips in temporal order) in order of first appearance in the file."""
    by_video: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        if row["status"] != "kept" or not row["clip_tar"]:
            continue
        if not row["caption"]:
            report.no_caption += 1
            continue
        by_video.setdefault(row["video_id"], []).append(row)
    for video_id, clips in by_video.items():
        if video_id in seen:
            raise DataError(f"{path}: clips of video {video_id!r} also appear in an earlier table; "
                             "ICL sequences need each video's clips in one table (as stage shards have them)")
        seen.add(video_id)
        yield video_id, sorted(clips, key=lambda c: (c["start"], c["end"]))


def _windows(clips: list[dict], cfg: ICLConfig) -> list[list[dict]]:
    if cfg.max_clips is None:
        return [clips]
    return [clips[i:i + cfg.max_clips] for i in range(0, len(clips), cfg.max_clips)]


def build_icl(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: ICLConfig,
              clips_dir: str | os.PathLike | None = None, asr: ASRIndex | None = None) -> ICLReport:
    """Write ICL sequences from clip tables (files or stage directories) to JSON lines at ``out``.

    A report (counts, config, ``clips_dir``) is written beside it as ``{out}.json``.
    """
    if cfg.format == "b" and asr is None:
        raise ConfigError("ICL format (b) needs ASR segments (--asr)")
    files = table_files(inputs)
    clips_dir = Path(clips_dir) if clips_dir is not None else None
    report = ICLReport(config=asdict(cfg), inputs=[str(f) for f in files])
    out = Path(out)
    seen: set[str] = set()
    with atomic_path(out) as tmp, tmp.open("w") as f:
        for index, path in enumerate(files):
            schema = pq.read_schema(path)
            missing = [c for c in CLIP_COLUMNS if c not in schema.names]
            if missing:
                raise DataError(f"{path}: ICL sequences need columns {missing}")
            require_text_columns(schema, ("video_id", "clip_id", "status", "caption", "clip_tar", "clip_key"), path)
            sequences = []  # (ids, items) per window
            for video_id, clips in _videos(pq.read_table(path, columns=list(CLIP_COLUMNS)), report, seen, path):
                windows = [w for w in _windows(clips, cfg) if len(w) >= cfg.min_clips]
                if not windows:
                    report.too_few_clips += 1
                    continue
                rng = np.random.default_rng([cfg.seed, stable_hash64(video_id) & (2**64 - 1)])
                report.videos += 1
                for n, window in enumerate(windows):
                    items = video_sequence(window, rng, cfg, report, clips_dir, asr if cfg.format == "b" else None)
                    sequences.append(([video_id if len(windows) == 1 else f"{video_id}#{n}"], [video_id], items))
            if cfg.format == "c":
                sequences = _pairs(sequences, np.random.default_rng([cfg.seed, index]), report)
            for ids, videos, items in sequences:
                record = {"id": "+".join(ids), "format": cfg.format, "videos": videos, "sequence": items}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                report.sequences += 1
    summary = {**asdict(report), "clips_dir": str(clips_dir) if clips_dir else None}
    atomic_write(out.with_name(out.name + ".json"), json.dumps(summary, indent=1))
    return report


def _pairs(sequences: list[tuple], rng: np.random.Generator, report: ICLReport) -> list[tuple]:
    """Format (c): sequences shuffled and concatenated two by two, never two windows of one video."""
    pool = [sequences[i] for i in rng.permutation(len(sequences))]
    paired = []
    while len(pool) >= 2:
        ids1, videos1, items1 = pool.pop()
        partner = next((k for k in range(len(pool) - 1, -1, -1) if pool[k][1] != videos1), None)
        if partner is None:  # only windows of this same video are left
            pool.append((ids1, videos1, items1))
            break
        ids2, videos2, items2 = pool.pop(partner)
        paired.append((ids1 + ids2, videos1 + videos2, items1 + items2))
    report.unpaired += len(pool)
    return paired
