"""Resumable staged runs: a shard of source videos is the unit of work.

For shard ``s`` a stage writes ``{s:05d}.tar`` (kept clips: ``{key}.mp4/.txt/.json`` through
:class:`viclip.data.tars.ShardWriter`), then ``{s:05d}.parquet`` (every clip row, failed videos
included), then ``{s:05d}.stats.json``, which marks the shard done. Each file is renamed into place
when complete, so a killed run leaves at most temporary files, which the next run deletes before it
redoes that shard; finished shards are skipped. The output directory may be any fsspec URL
(``s3://bucket/clips``): each file is then uploaded whole once finished (:mod:`viclip.atomic`), the
stats file still last, and the shard's work files stay in a local temporary directory. Shards are
fixed slices of the source list (the list and the config are recorded in ``config.json`` and checked
on every rerun), so SLURM array task ``i`` of ``N`` takes shards ``s`` with ``s % N == i`` and any
mix of reruns yields each clip once.

Videos run in supervised workers (:mod:`viclip.curation.pool`): a video that hangs or kills its
worker becomes a ``timeout`` or ``crashed`` row and the shard goes on. ``retry_failed`` reruns the
failed videos of finished shards and rewrites those shards the same way, file by file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from viclip.atomic import atomic_rename, atomic_write, filesystem, join, local_path
from viclip.curation.clips import CurationConfig, VideoResult
from viclip.curation.pool import TimeBudget, process_sources
from viclip.curation.sources import Source
from viclip.curation.table import STATS_SUFFIX, rows_to_table, write_table
from viclip.data.tars import SIZES_FILE, ShardWriter
from viclip.progress import progress as progress_bar

CONFIG_FILE = "config.json"
WORK_DIR = ".work"
MAX_SHARDS = 100_000  # shard ids are 5 digits in tar names and sample keys
MAX_CLIPS_PER_SHARD = 999_999  # sample index is 6 digits in keys


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


def plan_shards(sources: Sequence[Source], videos_per_shard: int) -> list[list[Source]]:
    """Fixed consecutive slices of the source list."""
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    shards = [list(sources[i:i + videos_per_shard]) for i in range(0, len(sources), videos_per_shard)]
    if len(shards) > MAX_SHARDS:
        raise ValueError(f"{len(shards)} shards exceed {MAX_SHARDS}: raise videos_per_shard")
    return shards


def task_shards(num_shards: int, task: int = 0, num_tasks: int = 1) -> list[int]:
    """The shards array task ``task`` of ``num_tasks`` owns (round robin, so tasks get equal work)."""
    if not 0 <= task < num_tasks:
        raise ValueError(f"task must be in [0, num_tasks), got task={task}, num_tasks={num_tasks}")
    return list(range(task, num_shards, num_tasks))


def _sources_digest(sources: Sequence[Source]) -> str:
    h = hashlib.sha256()
    for s in sources:
        anns = [] if s.annotations is None else [(a.start, a.end, a.caption) for a in s.annotations]
        h.update(json.dumps([s.video_id, s.uri, anns]).encode())
    return h.hexdigest()


def _atomic_json(path: str, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True))


def record_or_check_settings(out_dir: StageDir, record: dict) -> None:
    """Record the run's config and source list, or refuse to resume a directory made with others."""
    if out_dir.exists(CONFIG_FILE):
        old = out_dir.read_json(CONFIG_FILE)
        if old != record:
            keys = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(f"{out_dir} was made with a different {', '.join(keys)} "
                             f"({out_dir.path(CONFIG_FILE)}); use a new output directory or the original settings")
        return
    _atomic_json(out_dir.path(CONFIG_FILE), record)


@dataclass
class StageSummary:
    shards: int = 0            # shards owned by this task
    skipped: int = 0           # already done before this run
    done: int = 0              # finished by this run
    retried: int = 0           # finished before, rewritten by this run with their failed videos redone
    videos: int = 0            # processed by this run
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    seconds: float = 0.0


def _reasons_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "-"


@dataclass
class _Finished:
    """A finished shard to retry: its table's rows and stats, and the sources of its failed rows (in order)."""

    rows: list[dict]
    stats: dict
    sources: list[Source]


class _ShardState:
    """Collects one shard's results in source order and writes its outputs when complete.

    A retry (``finished``) rebuilds a done shard: the clips its table's kept rows reference are
    copied from its tar first, under the same keys (``0..k-1``), the retried sources' clips follow,
    and each retried source's rows take its failed row's place. Building from the table, not from
    the tar's members, is what makes a retry killed after renaming the new tar give the same result
    when run again: the table still names only the clips it had.
    """

    def __init__(self, out_dir: StageDir, shard: int, num_videos: int, finished: _Finished | None = None) -> None:
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
                    raise ValueError(f"{path}: clip keys of the kept rows are not 0..{len(wanted) - 1}")
                sample.clear()
                self.kept += 1
        if self.kept != len(wanted):
            raise ValueError(f"{path} lacks {len(wanted) - self.kept} of the {len(wanted)} clips that "
                             f"{shard_name(self.shard)}.parquet keeps")

    def add(self, result: VideoResult) -> None:
        clips = iter(result.clips)
        for row in result.rows:
            row["shard"] = self.shard
            if row["status"] == "kept":
                if self.kept >= MAX_CLIPS_PER_SHARD:
                    raise ValueError(f"shard {self.shard} has more than {MAX_CLIPS_PER_SHARD} clips: "
                                     "lower videos_per_shard")
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
        _atomic_json(self.out_dir.path(stats_name(self.shard)), stats)  # last: marks the shard done
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work.parent.rmdir()  # only when no other shard is in progress
        return stats


def _to_retry(out_dir: StageDir, shard: int, sources: Sequence[Source]) -> _Finished | None:
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
    return _Finished(rows, stats, [by_id[r["video_id"], r["source"]] for r in failed])


def write_sizes_if_complete(out_dir: StageDir, num_shards: int) -> bool:
    """Write ``sizes.json`` once every shard of the plan is done (any task may be the last one)."""
    stats = []
    for s in range(num_shards):
        if not out_dir.exists(stats_name(s)):
            return False
        stats.append(out_dir.read_json(stats_name(s)))
    sizes = {st["tar"]: st["kept"] for st in stats if st["tar"]}
    if not out_dir.exists(SIZES_FILE) or out_dir.read_json(SIZES_FILE) != sizes:  # an idle rerun writes nothing
        _atomic_json(out_dir.path(SIZES_FILE), sizes)
    return True


def run_stage(sources: Sequence[Source], out_dir: str | os.PathLike, cfg: CurationConfig | None = None,
              videos_per_shard: int = 100, task: int = 0, num_tasks: int = 1, workers: int = 1,
              budget: TimeBudget | None = None, retry_failed: bool = False,
              progress: bool = True) -> StageSummary:
    """Process the shards this task owns that are not done yet.

    Each video runs in one of ``workers`` supervised processes within its time ``budget`` (default
    :class:`TimeBudget`; like ``threads`` it is not recorded, so reruns may change it). ``workers=0``
    runs in this process, for debugging: no time budget and no crash isolation. ``retry_failed``
    also redoes the failed videos of this task's finished shards and rewrites those shards.
    """
    cfg = cfg or CurationConfig()
    out_dir = StageDir(out_dir)
    shards = plan_shards(sources, videos_per_shard)
    settings = dataclasses.asdict(cfg)
    for part in ("scenes", "extract"):
        settings[part].pop("threads")  # how fast, not what: tasks may differ
    record_or_check_settings(out_dir, {"config": settings, "videos_per_shard": videos_per_shard,
                           "num_sources": len(sources), "sources_sha256": _sources_digest(sources)})
    mine = task_shards(len(shards), task, num_tasks)
    pending = [s for s in mine if not out_dir.exists(stats_name(s))]
    finished = [s for s in mine if s not in pending]
    for s in finished:  # a kill between marking a shard done and removing its work dir
        shutil.rmtree(out_dir.work_root() / shard_name(s), ignore_errors=True)
    retry = {s: f for s in finished if retry_failed and (f := _to_retry(out_dir, s, shards[s])) is not None}
    summary = StageSummary(shards=len(mine), skipped=len(finished) - len(retry))
    todo = {s: retry[s].sources if s in retry else shards[s] for s in sorted([*pending, *retry])}
    jobs = [(s, src) for s, srcs in todo.items() for src in srcs]
    started = time.time()
    bar = progress_bar(total=len(jobs), unit="video", enabled=progress, smoothing=0.1,
                       desc=f"task {task}/{num_tasks}: {len(pending)} shards, {len(retry)} to retry "
                            f"({summary.skipped} done before)")
    states: dict[int, _ShardState] = {}

    def finish(shard: int) -> None:
        stats = states.pop(shard).finish()
        if shard in retry:
            summary.retried += 1
        else:
            summary.done += 1
        bar.write(f"shard {shard_name(shard)} {'retried' if shard in retry else 'done'}: {stats['videos']} "
                  f"videos, {stats['kept']} clips kept, {stats['failed']} failed "
                  f"({_reasons_text(stats['failed_by_reason'])}), dropped {stats['dropped']}, "
                  f"{stats['cpu_seconds']:.1f} CPU s")

    results = process_sources([src for _, src in jobs], cfg, workers, budget)
    try:
        for shard in [s for s, srcs in todo.items() if not srcs]:  # a retry killed before writing its stats
            states[shard] = _ShardState(out_dir, shard, 0, retry[shard])
            finish(shard)
        with contextlib.closing(results):  # stops the workers also when this loop raises
            for shard, result in zip([s for s, _ in jobs], results):
                if shard not in states:
                    states[shard] = _ShardState(out_dir, shard, len(todo[shard]), retry.get(shard))
                state = states[shard]
                state.add(result)
                summary.videos += 1
                summary.kept += len(result.clips)
                for row in result.rows:
                    if row["status"] == "failed":
                        summary.failed += 1
                        summary.failed_by_reason[row["reason"]] = summary.failed_by_reason.get(row["reason"], 0) + 1
                elapsed = max(time.time() - started, 1e-9)
                bar.update(1)
                bar.set_postfix({"videos/s": f"{summary.videos / elapsed:.2f}",
                                 "clips/s": f"{summary.kept / elapsed:.1f}",
                                 "failed": _reasons_text(summary.failed_by_reason)}, refresh=False)
                if state.remaining == 0:
                    finish(shard)
    finally:
        bar.close()
    summary.seconds = time.time() - started
    with contextlib.suppress(OSError):
        out_dir.work_root().rmdir()  # only when no shard of another task is in progress
    write_sizes_if_complete(out_dir, len(shards))
    return summary


@dataclass
class TableShard:
    """A finished shard of an earlier stage: its clip rows, and the directory holding its tars.

    A process calls ``advance(n)`` as it finishes ``n`` kept clips, so the stage's progress display
    moves within a shard (thousands of clips) and not only at its end.
    """

    shard: int
    table: pa.Table
    clips_dir: Path
    advance: Callable[[int], None] = lambda n: None


def clips_dir_of(stage_dir: Path) -> Path:
    """Where a stage's clips live: its own directory, or the one its table stage recorded."""
    config = stage_dir / CONFIG_FILE
    recorded = json.loads(config.read_text()).get("clips_dir") if config.exists() else None
    return Path(recorded) if recorded else stage_dir.resolve()


def _kept_count(path: Path) -> int:
    """Kept rows of a clip table, from its status column alone."""
    status = pq.read_table(path, columns=["status"])["status"]
    return pc.sum(pc.equal(status, "kept")).as_py() or 0


def run_table_stage(in_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    make_process: Callable[[], Callable[[TableShard], tuple[pa.Table, dict]]], record: dict,
                    task: int = 0, num_tasks: int = 1, progress: bool = True) -> StageSummary:
    """Map a process over the finished shards of ``in_dir``: a clip table in, a table and stats out.

    ``make_process()`` builds it (models and all) just before the first shard that needs it, so a
    finished or mismatched run loads nothing.

    Captioning and scoring add columns this way, with the same contract as :func:`run_stage`:
    ``{s:05d}.parquet`` then ``{s:05d}.stats.json`` (the done mark), reruns skip done shards,
    ``record`` is checked against ``config.json``, task ``i`` of ``N`` owns shards ``s % N == i``.
    Shards that ``in_dir`` has not finished yet are left for a later run. The clips stay in the
    first stage's tars; ``clips_dir`` is recorded so the next table stage finds them too.
    """
    if not 0 <= task < num_tasks:
        raise ValueError(f"task must be in [0, num_tasks), got task={task}, num_tasks={num_tasks}")
    in_dir, out_dir = Path(in_dir), StageDir(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input stage directory not found: {in_dir}")
    clips_dir = clips_dir_of(in_dir)
    record_or_check_settings(out_dir, {**record, "input": str(in_dir.resolve()), "clips_dir": str(clips_dir)})
    finished = sorted(int(p.name[:-len(STATS_SUFFIX)]) for p in in_dir.glob(f"*{STATS_SUFFIX}"))
    mine = [s for s in finished if s % num_tasks == task]
    pending = [s for s in mine if not out_dir.exists(stats_name(s))]
    summary = StageSummary(shards=len(mine), skipped=len(mine) - len(pending))
    started = time.time()
    process = make_process() if pending else None
    kept = {s: _kept_count(in_dir / f"{shard_name(s)}.parquet") for s in pending}
    reported: Counter[int] = Counter()
    with progress_bar(total=sum(kept.values()), unit="clip", enabled=progress,
                      desc=f"task {task}/{num_tasks}: {len(pending)} shards ({summary.skipped} done before)") as bar:
        def advance(shard: int, n: int) -> None:
            reported[shard] += n
            bar.update(n)

        for shard in pending:
            name = shard_name(shard)
            out_dir.remove_leftovers(f".{name}.parquet.tmp*")  # a killed run's partial table
            table, stats = process(TableShard(shard, pq.read_table(in_dir / f"{name}.parquet"), clips_dir,
                                              functools.partial(advance, shard)))
            write_table(table, out_dir.path(f"{name}.parquet"))
            _atomic_json(out_dir.path(stats_name(shard)), {"shard": shard, **stats})  # last: marks the shard done
            summary.done += 1
            summary.kept += stats.get("clips", 0)
            summary.failed += stats.get("failed", 0)
            bar.update(kept[shard] - reported[shard])  # what the process did not report
    summary.seconds = time.time() - started
    return summary
