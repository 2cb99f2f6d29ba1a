"""Export a curated subset for text-to-video training: the clips as mp4 files and one table of their metadata.

Text-to-video trainers (Open-Sora-style CSV datasets) read a table of ``path, caption, frames, height,
width, fps, aesthetic, similarity``; the paper's InternVid-Aes is such a subset (``build_subset --rule
aes``). Each kept clip is copied out of its stage's tar to ``{out}/clips/{clip_key}.mp4`` (written
atomically; a rerun skips clips already there) and listed in ``{out}/metadata.{csv|parquet}``.

Clips made with the default extraction are stored for training (4 fps, every frame a keyframe,
``fastdecode``); for generation re-extract them at viewing quality first (``--fps 0 --tune ''
--keyframe-interval 1 --short-side 720 --crf 18``: the source frame rate, x264's default tune, a
keyframe a second). The stage's extraction settings are recorded in the export report, with a
warning when they are the training ones.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.stage_dir import CONFIG_FILE, clips_dir_of
from viclip.errors import ConfigError, DataError
from viclip.progress import progress as progress_bar

FORMATS = ("csv", "parquet")
TABLE_COLUMNS = ("path", "caption", "frames", "height", "width", "fps", "aesthetic", "similarity")


@dataclass(frozen=True)
class ExportConfig:
    """Table format and where the numbers come from."""

    format: str = "csv"
    clips: str | None = None  # the stage directory whose tars hold the clips (default: from the subset's report)
    similarity_column: str = "clip_text_sim"
    relative_paths: bool = False  # paths relative to the table instead of absolute

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {FORMATS}, got {self.format!r}")


@dataclass
class ExportReport:
    subset: str
    clips_dir: str
    table: str
    clips: int = 0
    copied: int = 0  # by this run (the rest were already there)
    extract: dict | None = None  # the stage's clip extraction settings
    warnings: list[str] = field(default_factory=list)


def _plain_name(key: object) -> bool:
    """A clip key that names a file in one folder: no separator, not empty, ``.`` or ``..``, not absolute."""
    return (isinstance(key, str) and key not in ("", ".", "..") and "/" not in key and "\\" not in key
            and "\0" not in key)


def _clips_dir(subset: Path, cfg: ExportConfig) -> Path:
    if cfg.clips:
        return clips_dir_of(Path(cfg.clips))
    report = subset.with_name(subset.name + ".json")
    inputs = json.loads(report.read_text()).get("inputs", []) if report.is_file() else []
    stages = {str(clips_dir_of(Path(i).parent)) for i in inputs}
    if len(stages) != 1:
        raise DataError(f"{subset}: cannot tell which stage holds the clips ({len(stages)} found in {report}); "
                         "give --clips STAGE_DIR")
    return Path(stages.pop())


def _extract_settings(clips_dir: Path) -> tuple[dict | None, list[str]]:
    config = clips_dir / CONFIG_FILE
    extract = json.loads(config.read_text()).get("config", {}).get("extract") if config.is_file() else None
    warnings = []
    if extract and (extract.get("fps") or extract.get("tune") == "fastdecode"):
        warnings.append(f"clips in {clips_dir} were extracted for training (fps {extract.get('fps')}, tune "
                        f"{extract.get('tune')!r}); re-extract with --fps 0 --tune '' for viewing quality")
    return extract, warnings


def export_subset(subset: str | os.PathLike, out_dir: str | os.PathLike, cfg: ExportConfig,
                  progress: bool = True) -> ExportReport:
    """Copy the subset's clips out of their tars and write the metadata table; returns the report."""
    subset, out = Path(subset), Path(out_dir)
    if not subset.is_file():
        raise FileNotFoundError(f"subset table not found: {subset} (make it with build_subset)")
    table = pq.read_table(subset)
    if "status" in table.column_names:
        table = table.filter(pc.equal(table.column("status"), "kept"))
    need = ["clip_tar", "clip_key", "caption", "frames", "height", "width", "fps", "aesthetic", cfg.similarity_column]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise DataError(f"{subset}: the export needs columns {missing} (a scored, captioned subset)")
    clips_dir = _clips_dir(subset, cfg)
    rows = table.select(need).to_pylist()
    table_path = out / f"metadata.{cfg.format}"
    for r in rows:
        if not _plain_name(r["clip_key"]):
            raise DataError(f"{subset}: clip_key {r['clip_key']!r} is not a plain file name (a path would write "
                            f"outside {out / 'clips'})")
    dests = [out / "clips" / f"{r['clip_key']}.mp4" for r in rows]
    by_tar: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if not dests[i].exists():  # written atomically: present means complete
            by_tar[r["clip_tar"]].append(i)
    copied = 0
    with progress_bar(total=sum(map(len, by_tar.values())), desc="export clips", unit="clip",
                  enabled=progress) as bar:
        for tar_name, todo in by_tar.items():
            tar_path = clips_dir / tar_name
            if not tar_path.is_file():
                raise FileNotFoundError(f"clip tar not found: {tar_path} (listed by {subset})")
            with tarfile.open(tar_path, mode="r:") as tar:
                for i in todo:
                    member = f"{rows[i]['clip_key']}.mp4"
                    try:
                        data = tar.extractfile(member).read()
                    except KeyError:
                        raise DataError(f"{tar_path} has no member {member} (listed by {subset})") from None
                    atomic_write(dests[i], data)
                    copied += 1
                    bar.update(1)
    paths = [os.path.relpath(d, out) if cfg.relative_paths else str(d.resolve()) for d in dests]
    columns = {"path": paths, **{c: [r[c] for r in rows] for c in TABLE_COLUMNS[1:-1]},
               "similarity": [r[cfg.similarity_column] for r in rows]}
    result = pa.table(columns)
    with atomic_path(table_path) as tmp:
        (pcsv.write_csv if cfg.format == "csv" else pq.write_table)(result, tmp)
    extract, warnings = _extract_settings(clips_dir)
    report = ExportReport(str(subset), str(clips_dir), str(table_path), len(rows), copied, extract, warnings)
    atomic_write(out / "export.json", json.dumps(asdict(report), indent=1))
    return report
