"""A cost plan for a whole curation job, stage by stage, from rates measured on a sample run.

Rates come from a calibration, never from guesses: :func:`calibrate` reads the done marks
(``{s:05d}.stats.json``) and outputs of a sample run's stage directories:

- **split** (split-scenes): source seconds per CPU second (``source_seconds`` / ``cpu_seconds``: CPU time,
  so per core), kept clips and kept seconds per source hour, bytes per kept clip (its tars);
- **caption**, **score**, **embed** (the model stages): clips per second of the device they ran on
  (``clips`` / ``seconds``; the stats do not record the device, so the calibration names it) and the bytes
  per clip of their tables.

A rates file (JSON, the same layout; e.g. a GPU run's calibration, or figures ``bench/curation.py``
printed) overrides stage by stage, so GPU rates measured elsewhere plan the model stages. :func:`plan`
scales them to ``hours`` of source video: core-hours for splitting, device-hours for the model stages,
storage of the clips and tables; a stage without a rate is "not measured", never estimated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viclip.curation.table import STATS_SUFFIX
from viclip.errors import DataError

MODEL_STAGES = ("caption", "score", "embed")
STAGES = ("split", *MODEL_STAGES)


def _done_stats(stage_dir: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Each finished shard of a stage directory: its stats file and contents."""
    root = Path(stage_dir)
    files = sorted(root.glob(f"*{STATS_SUFFIX}"))
    if not root.is_dir() or not files:
        raise DataError(f"{root}: no finished shards ({{shard}}{STATS_SUFFIX}) to calibrate from")
    return [(f, json.loads(f.read_text())) for f in files]


def _sum(stats: list[tuple[Path, dict]], key: str, root: Path) -> float:
    missing = [f.name for f, st in stats if key not in st]
    if missing:
        raise DataError(f"{root / missing[0]}: no {key!r}: not a stats file of the stage given")
    return float(sum(st[key] for _, st in stats))


def calibrate_split(stage_dir: str | os.PathLike) -> dict[str, float]:
    """Rates of a split-scenes (or fetch-clips) sample run."""
    root, stats = Path(stage_dir), _done_stats(stage_dir)
    source, cpu, kept = (_sum(stats, k, root) for k in ("source_seconds", "cpu_seconds", "kept"))
    if not source or not cpu or not kept:
        raise DataError(f"{root}: the sample kept {kept:.0f} clips from {source:.0f} source seconds in {cpu:.1f} CPU "
                        "seconds: too little to calibrate from")
    tar_bytes = sum((root / st["tar"]).stat().st_size for _, st in stats if st.get("tar"))
    return {"source_seconds_per_cpu_second": source / cpu, "kept_clips_per_source_hour": kept / source * 3600,
            "kept_seconds_per_source_second": _sum(stats, "kept_seconds", root) / source,
            "bytes_per_clip": tar_bytes / kept, "sample_videos": _sum(stats, "videos", root),
            "sample_source_hours": source / 3600}


def calibrate_model_stage(stage_dir: str | os.PathLike, device: str) -> dict[str, Any]:
    """Rates of a caption-clips, score-clips or embed-clips sample run on ``device`` (a name for the plan)."""
    root, stats = Path(stage_dir), _done_stats(stage_dir)
    clips, seconds = _sum(stats, "clips", root), _sum(stats, "seconds", root)
    if not clips or not seconds:
        raise DataError(f"{root}: {clips:.0f} clips in {seconds:.1f} s: too little to calibrate from")
    table_bytes = sum(f.with_name(f.name[:-len(STATS_SUFFIX)] + ".parquet").stat().st_size for f, _ in stats)
    return {"clips_per_second": clips / seconds, "device": device, "bytes_per_clip": table_bytes / clips,
            "sample_clips": clips}


def calibrate(dirs: dict[str, str | os.PathLike | None], device: str) -> dict[str, dict]:
    """Rates of each stage whose sample directory ``dirs`` names (``split``, ``caption``, ``score``, ``embed``)."""
    rates = {}
    for stage, stage_dir in dirs.items():
        if stage_dir is not None:
            rates[stage] = calibrate_split(stage_dir) if stage == "split" else calibrate_model_stage(stage_dir, device)
    return rates


def read_rates(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Rates files, later ones overriding earlier ones stage by stage."""
    rates: dict[str, dict] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"rates file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        unknown = sorted(set(data) - set(STAGES)) if isinstance(data, dict) else None
        if unknown is None or unknown:
            raise DataError(f"{path}: expected an object with stages of {list(STAGES)}, got {unknown or data!r}")
        rates.update(data)
    return rates


@dataclass
class StagePlan:
    stage: str
    work: str
    rate: str
    hours: float | None       # core-hours (split) or device-hours (model stages); None: not measured
    unit: str                 # what ``hours`` counts
    storage_bytes: float | None


def plan(videos: int, hours: float, rates: dict[str, dict], clips: float | None = None) -> list[StagePlan]:
    """Each stage's cost for ``videos`` sources of ``hours`` in all; ``clips`` overrides the split rate's count."""
    rows = []
    split = rates.get("split")
    if split:
        clips = clips if clips is not None else hours * split["kept_clips_per_source_hour"]
        rows.append(StagePlan("split", f"{hours:,.0f} source hours of {videos:,} videos",
                              f"{split['source_seconds_per_cpu_second']:.2f} source min / core-min",
                              hours / split["source_seconds_per_cpu_second"], "core-hours",
                              clips * split["bytes_per_clip"]))
    else:
        rows.append(StagePlan("split", f"{hours:,.0f} source hours", "not measured", None, "core-hours", None))
    for stage in MODEL_STAGES:
        r = rates.get(stage)
        work = f"{clips:,.0f} clips" if clips is not None else "clips unknown (no split rate, no --clips)"
        if r and clips is not None:
            rows.append(StagePlan(stage, work, f"{r['clips_per_second']:.2f} clips/s on {r['device']}",
                                  clips / r["clips_per_second"] / 3600, f"{r['device']}-hours",
                                  clips * r["bytes_per_clip"] if "bytes_per_clip" in r else None))
        else:
            rate = f"{r['clips_per_second']:.2f} clips/s on {r['device']}" if r else "not measured"
            rows.append(StagePlan(stage, work, rate, None, "device-hours", None))
    return rows


def format_plan(rows: list[StagePlan], cores: int | None = None, devices: int | None = None) -> str:
    """The plan as a table; with ``cores`` / ``devices`` also the wall-clock days at that parallelism."""
    def size(b: float | None) -> str:
        return "-" if b is None else f"{b / 1e12:,.2f} TB"

    lines = [f"{'stage':8s} {'work':40s} {'rate':38s} {'hours':>16s} {'storage':>12s}" +
             ("  wall days" if cores or devices else "")]
    for r in rows:
        hours = "not measured" if r.hours is None else f"{r.hours:,.0f} {r.unit.split('-hours')[0]}-h"
        line = f"{r.stage:8s} {r.work:40s} {r.rate:38s} {hours:>16s} {size(r.storage_bytes):>12s}"
        parallel = cores if r.stage == "split" else devices
        if r.hours is not None and parallel:
            line += f"  {r.hours / parallel / 24:,.1f} on {parallel}"
        lines.append(line)
    total = sum(r.storage_bytes or 0.0 for r in rows)
    lines.append(f"storage in all (measured stages): {size(total)}")
    return "\n".join(lines)
