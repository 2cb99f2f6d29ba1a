"""A stage's output directory: where its files live, the settings it records, its done marks.

For shard ``s`` a stage writes its outputs, then ``{s:05d}.stats.json`` last: the shard's done mark.
``config.json`` records the settings and source list and is checked on every rerun; ``sizes.json``
appears once every shard is done. The directory may be any fsspec URL (:mod:`viclip.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from viclip.atomic import atomic_write, filesystem, join, local_path
from viclip.curation.table import STATS_SUFFIX
from viclip.data.tars import SIZES_FILE
from viclip.errors import OutputError

CONFIG_FILE = "config.json"
WORK_DIR = ".work"


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


class StageDir:
    """A stage's output directory: a local path or any fsspec URL; files are named relative to it."""

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = os.fspath(url)
        self.fs = filesystem(self.url)[0]
        self.local = local_path(self.url)  # None on an object store, which never shows temporary names

    def __str__(self) -> str:
        return self.url

    def path(self, name: str) -> str:
        return join(self.url, name)

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read_json(self, name: str) -> object:
        return json.loads(self.fs.cat_file(self.path(name)))

    def read_table(self, name: str) -> pa.Table:
        with self.fs.open(self.path(name), "rb") as f:
            return pq.read_table(f)

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.rm_file(self.path(name))

    def remove_leftovers(self, pattern: str) -> None:
        """Delete a killed run's temporary files matching ``pattern`` (they exist only on local disks)."""
        if self.local is not None:
            for leftover in self.local.glob(pattern):
                leftover.unlink(missing_ok=True)

    def work_root(self) -> Path:
        """Where shards in progress are built: ``.work`` inside a local directory; for a URL a local
        temporary directory named after it, so a rerun finds (and removes) a killed run's files."""
        if self.local is not None:
            return self.local / WORK_DIR
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"viclip-stage-{digest}"


def stats_name(shard: int) -> str:
    return f"{shard_name(shard)}{STATS_SUFFIX}"


def atomic_json(path: str, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True))


def with_introduced(old: dict, introduced: dict) -> dict:
    """``old`` with the settings it predates filled in (nested), at the value such a run used."""
    out = dict(old)
    for key, value in introduced.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_introduced(out[key], value)
    return out


def record_or_check_settings(out_dir: StageDir, record: dict, introduced: dict | None = None,
                             new_dir: str = "a new output directory") -> None:
    """Record the run's config and source list, or refuse to resume a directory made with others.

    ``introduced``: settings added after directories were first written, at the value a directory that
    predates them ran with (nested like ``record``), so that such a directory still resumes. ``new_dir``:
    how the refusal names the way out."""
    if out_dir.exists(CONFIG_FILE):
        old = with_introduced(out_dir.read_json(CONFIG_FILE), introduced or {})
        if old != record:
            keys = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise OutputError(f"{out_dir} was made with a different {', '.join(keys)} "
                              f"({out_dir.path(CONFIG_FILE)}); use {new_dir} or the original settings")
        return
    atomic_json(out_dir.path(CONFIG_FILE), record)


def write_sizes_if_complete(out_dir: StageDir, num_shards: int) -> bool:
    """Write ``sizes.json`` once every shard of the plan is done (any task may be the last one)."""
    stats = []
    for s in range(num_shards):
        if not out_dir.exists(stats_name(s)):
            return False
        stats.append(out_dir.read_json(stats_name(s)))
    sizes = {st["tar"]: st["kept"] for st in stats if st["tar"]}
    if not out_dir.exists(SIZES_FILE) or out_dir.read_json(SIZES_FILE) != sizes:  # an idle rerun writes nothing
        atomic_json(out_dir.path(SIZES_FILE), sizes)
    return True


def clips_dir_of(stage_dir: Path) -> Path:
    """Where a stage's clips live: its own directory, or the one its table stage recorded."""
    config = stage_dir / CONFIG_FILE
    recorded = json.loads(config.read_text()).get("clips_dir") if config.exists() else None
    return Path(recorded) if recorded else stage_dir.resolve()
