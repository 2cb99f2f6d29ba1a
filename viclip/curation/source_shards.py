"""One shard of source videos, from its sources to its done mark: the unit every engine runs for
split-scenes and fetch-clips.

The shard's videos run in supervised workers (:mod:`viclip.curation.pool`): a video that hangs or
kills its worker becomes a ``timeout`` or ``crashed`` row and the shard goes on. The shard writes
``{s:05d}.tar`` (kept clips: ``{key}.mp4/.txt/.json`` through :class:`viclip.data.tars.ShardWriter`),
then ``{s:05d}.parquet`` (every clip row, failed videos included), then ``{s:05d}.stats.json``, which
marks it done. Each file is renamed into place (uploaded whole to a URL) when complete, so a killed
shard leaves at most temporary files, which its next run deletes before redoing it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from viclip.atomic import atomic_rename
from viclip.curation.clips import CurationConfig, VideoResult
from viclip.curation.engine import Advance, ShardRunner
from viclip.curation.pool import TimeBudget, process_sources
from viclip.curation.sources import Source
from viclip.curation.stage_dir import StageDir, atomic_json, shard_name, stats_name
from viclip.curation.table import rows_to_table, write_table
from viclip.data.tars import ShardWriter
from viclip.errors import ConfigError, DataError

MAX_CLIPS_PER_SHARD = 999_999  # sample index is 6 digits in keys


@dataclass
class Finished:
    """A finished shard to retry: its table's rows and stats, and the sources of its failed rows (in order)."""

    rows: list[dict]
    stats: dict
    sources: list[Source]


class ShardState:
    """Collects one shard's results in source order and writes its outputs when complete.

    A retry (``finished``) rebuilds a done shard: the clips its table's kept rows reference are
    copied from its tar first, under the same keys (``0..k-1``), the retried sources' clips follow,
    and each retried source's rows take its failed row's place. Building from the table, not from
    the tar's members, is what makes a retry killed after renaming the new tar give the same result
    when run again: the table still names only the clips it had.
    """

    def __init__(self, out_dir: StageDir, shard: int, num_videos: int, finished: Finished | None = None) -> None:
        self.out_dir, self.shard, self.remaining, self.finished = out_dir, shard, num_videos, finished
        self.work = out_dir.work_root() / shard_name(shard)
        shutil.rmtree(self.work, ignore_errors=True)  # leftovers of a killed run
        out_dir.remove_leftovers(f".{shard_name(shard)}.*.tmp*")  # half-written table or stats
        self.writer = ShardWriter(self.work, max_samples=MAX_CLIPS_PER_SHARD + 1, max_bytes=1 << 62,
                                  start_shard=shard)
        self.results: list[list[dict]] = []  # rows of each source, in source order
        self.kept = 0
        self.seconds = self.cpu_seconds = 0.0
        self.tar = f"{shard_name(shard)}.tar"
        if finished is not None:
            self.seconds, self.cpu_seconds = finished.stats["video_seconds"], finished.stats["cpu_seconds"]
            self._copy_kept(finished.rows)

    def _copy_kept(self, rows: list[dict]) -> None:
        """Copy the clips of the kept rows from the shard's tar, in key order, so their keys stay the same."""
        wanted = {r["clip_key"] for r in rows if r["status"] == "kept"}
        if not wanted:
            return
        path, sample = self.out_dir.path(self.tar), {}
        with self.out_dir.fs.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if key not in wanted:
                    continue
                sample[ext] = tar.extractfile(member).read()
                if len(sample) < 3:  # ShardWriter writes a sample's mp4, txt and json together
                    continue
                meta = json.loads(sample["json"])
                caption = meta.pop("caption")
                if self.writer.write(sample["mp4"], caption, meta) != key:
                    raise DataError(f"{path}: clip keys of the kept rows are not 0..{len(wanted) - 1}")
                sample.clear()
                self.kept += 1
        if self.kept != len(wanted):
            raise DataError(f"{path} lacks {len(wanted) - self.kept} of the {len(wanted)} clips that "
                             f"{shard_name(self.shard)}.parquet keeps")

    def add(self, result: VideoResult) -> None:
        clips = iter(result.clips)
        for row in result.rows:
            row["shard"] = self.shard
            if row["status"] == "kept":
                if self.kept >= MAX_CLIPS_PER_SHARD:
                    raise ConfigError(f"shard {self.shard} has more than {MAX_CLIPS_PER_SHARD} clips: "
                                      "lower --videos-per-shard")
                row["clip_tar"] = self.tar
                meta = {k: v for k, v in row.items() if v is not None and k != "caption"}
                row["clip_key"] = self.writer.write(next(clips), row.get("caption") or "", meta)
                self.kept += 1
        self.results.append(result.rows)
        self.remaining -= 1
        self.seconds += result.seconds
        self.cpu_seconds += result.cpu_seconds

    def finish(self) -> dict:
        self.writer.close()
        if self.finished is None:
            rows = [r for rows in self.results for r in rows]
        else:
            retried = iter(self.results)
            rows = [r for old in self.finished.rows
                    for r in (next(retried) if old["status"] == "failed" else [old])]
        kept = [r for r in rows if r["status"] == "kept"]
        if kept:  # ShardWriter opens no tar for a shard without clips
            atomic_rename(self.work / self.tar, self.out_dir.path(self.tar))
        else:  # a retry killed after renaming its tar may have left one that the table does not name
            self.out_dir.remove(self.tar)
        write_table(rows_to_table(rows), self.out_dir.path(f"{shard_name(self.shard)}.parquet"))
        failed = [r for r in rows if r["status"] == "failed"]
        stats = {
            "shard": self.shard,
            "videos": len({r["video_id"] for r in rows}),
            "failed": len(failed),
            "failed_by_reason": dict(Counter(r["reason"] for r in failed)),
            "clips": len(rows) - len(failed),
            "kept": len(kept),
            "dropped": dict(Counter(r["reason"] for r in rows if r["status"] == "dropped")),
            "source_seconds": sum({r["video_id"]: r.get("source_duration") or 0.0 for r in rows}.values()),
            "kept_seconds": sum(r["duration"] for r in kept),
            "tar": self.tar if kept else None,
            "video_seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }
        atomic_json(self.out_dir.path(stats_name(self.shard)), stats)  # last: marks the shard done
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work.parent.rmdir()  # only when no other shard is in progress
        return stats


def to_retry(out_dir: StageDir, shard: int, sources: Sequence[Source]) -> Finished | None:
    """A finished shard's failed sources to redo; None when it has none and its stats agree.

    No failed rows but stats that count some mean a retry was killed between writing the table and
    the stats: such a shard is rebuilt with nothing to redo.
    """
    rows = out_dir.read_table(f"{shard_name(shard)}.parquet").to_pylist()
    stats = out_dir.read_json(stats_name(shard))
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed and stats["failed"] == 0:
        return None
    by_id = {(s.video_id, s.uri): s for s in sources}
    return Finished(rows, stats, [by_id[r["video_id"], r["source"]] for r in failed])


@dataclass
class ShardInput:
    """What one shard's run gets: its sources, or for a retry the failed ones and the shard as it is."""

    sources: list[Source]
    finished: Finished | None = None


@dataclass
class SourceShards:
    """The shard job of a source stage: its own ``make_runner`` (nothing to build) and its runner.

    A shard's videos go through ``workers`` supervised processes within their time ``budget``
    (``workers=0``: in the runner's process, no budget and no crash isolation, for debugging).
    """

    out_dir: str
    cfg: CurationConfig
    workers: int
    budget: TimeBudget

    def __call__(self) -> ShardRunner:
        return self.run

    def run(self, shard: int, work: ShardInput, advance: Advance) -> dict:
        """Process the shard's sources, write its outputs; its stats and this run's counts."""
        state = ShardState(StageDir(self.out_dir), shard, len(work.sources), work.finished)
        failed: Counter[str] = Counter()
        kept = 0
        with contextlib.closing(process_sources(work.sources, self.cfg, self.workers, self.budget)) as results:
            for result in results:  # closing stops the workers also when this loop raises
                state.add(result)
                kept += len(result.clips)
                failed.update(r["reason"] for r in result.rows if r["status"] == "failed")
                advance(1)
        return {"stats": state.finish(), "retried": work.finished is not None, "videos": len(work.sources),
                "kept": kept, "failed_by_reason": dict(failed)}
