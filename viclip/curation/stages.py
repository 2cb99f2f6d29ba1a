"""Resumable staged runs: a shard is the unit of work, and an engine runs the shards.

A source stage (split-scenes, fetch-clips) cuts the source list into fixed consecutive shards
(:mod:`viclip.curation.source_shards` does one); a table stage (caption-clips, score-clips) maps a
process over the finished shards of an earlier stage. Both describe their pending shards as a
:class:`~viclip.curation.engine.ShardJob` and hand it to an engine (this process, Ray; see
:mod:`viclip.curation.engine`), so the outputs are the same files whoever runs them. Every shard
ends with its done mark (:mod:`viclip.curation.stage_dir`): a rerun, by any engine, skips done
shards and redoes the rest. The list and the config are recorded in ``config.json`` and checked on
every rerun, so SLURM array task ``i`` of ``N`` takes shards ``s`` with ``s % N == i`` and any mix of
reruns yields each clip once. ``retry_failed`` reruns the failed videos of finished shards and
rewrites those shards the same way, file by file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from viclip.curation import scenes
from viclip.curation.clips import CurationConfig
from viclip.curation.engine import Advance, Engine, LocalEngine, ShardJob, ShardRunner
from viclip.curation.pool import TimeBudget
from viclip.curation.source_shards import ShardInput, SourceShards, to_retry
from viclip.curation.sources import Source
from viclip.curation.stage_dir import (
    StageDir,
    atomic_json,
    clips_dir_of,
    record_or_check_settings,
    shard_name,
    stats_name,
    write_sizes_if_complete,
)
from viclip.curation.table import STATS_SUFFIX, write_table
from viclip.errors import ConfigError
from viclip.progress import progress as progress_bar

MAX_SHARDS = 100_000  # shard ids are 5 digits in tar names and sample keys


def plan_shards(sources: Sequence[Source], videos_per_shard: int) -> list[list[Source]]:
    """Fixed consecutive slices of the source list."""
    if videos_per_shard < 1:
        raise ConfigError(f"--videos-per-shard must be >= 1, got {videos_per_shard}")
    shards = [list(sources[i:i + videos_per_shard]) for i in range(0, len(sources), videos_per_shard)]
    if len(shards) > MAX_SHARDS:
        raise ConfigError(f"{len(sources)} sources at --videos-per-shard {videos_per_shard} make {len(shards)} "
                          f"shards, over {MAX_SHARDS}: raise --videos-per-shard")
    return shards


def task_shards(num_shards: int, task: int = 0, num_tasks: int = 1) -> list[int]:
    """The shards array task ``task`` of ``num_tasks`` owns (round robin, so tasks get equal work)."""
    if not 0 <= task < num_tasks:
        raise ConfigError(f"--task must be in [0, --num-tasks), got --task {task} --num-tasks {num_tasks}")
    return list(range(task, num_shards, num_tasks))


def _sources_digest(sources: Sequence[Source]) -> str:
    h = hashlib.sha256()
    for s in sources:
        anns = [] if s.annotations is None else [(a.start, a.end, a.caption) for a in s.annotations]
        h.update(json.dumps([s.video_id, s.uri, anns]).encode())
    return h.hexdigest()


def _reasons_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "-"


@dataclass
class StageSummary:
    """What a run of a stage did; ``str()`` is the line a command ends with."""

    out: str = ""
    unit: str = "video"        # what a shard holds: source videos, or clips of an earlier stage
    shards: int = 0            # shards owned by this task
    skipped: int = 0           # already done before this run
    done: int = 0              # finished by this run
    retried: int = 0           # finished before, rewritten by this run with their failed videos redone
    videos: int = 0            # processed by this run (source stages)
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    kept: int = 0              # clips kept (source stages) or processed (table stages) by this run
    counts: dict[str, int] = field(default_factory=dict)  # a table stage's shard counts, summed
    seconds: float = 0.0

    def __str__(self) -> str:
        shards = f"{self.done} shards done" + (f", {self.retried} retried" if self.retried else "")
        shards += f", {self.skipped} done before (of {self.shards})"
        if self.unit == "clip":
            work = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in self.counts.items()) or "no clips"
        else:
            work = f"{self.videos} videos: {self.kept} clips kept, {self.failed} failed"
            work += f" ({_reasons_text(self.failed_by_reason)})" if self.failed else ""
        return f"{shards}; {work}; {self.seconds:.1f} s; output in {self.out}"


def _run_job(engine: Engine, job: ShardJob, bar: Any) -> Iterator[tuple[int, dict]]:
    """The engine's finished shards; the bar moves as a local runner advances, else by whole shards."""
    reported: Counter[int] = Counter()

    def advance(shard: int, n: int) -> None:
        reported[shard] += n
        bar.update(n)

    for shard, report in engine.run(job, advance):
        bar.update(job.sizes.get(shard, 0) - reported[shard])  # what the runner did not report
        yield shard, report


def run_stage(sources: Sequence[Source], out_dir: str | os.PathLike, cfg: CurationConfig | None = None,
              videos_per_shard: int = 100, task: int = 0, num_tasks: int = 1, workers: int = 1,
              budget: TimeBudget | None = None, retry_failed: bool = False,
              progress: bool = True, engine: Engine | None = None) -> StageSummary:
    """Process the shards this task owns that are not done yet, on ``engine`` (default: this process).

    Each video runs in one of the shard's ``workers`` supervised processes within its time ``budget``
    (default :class:`TimeBudget`; like ``threads`` it is not recorded, so reruns may change it).
    ``workers=0`` runs in the shard's process, for debugging: no time budget and no crash isolation.
    ``retry_failed`` also redoes the failed videos of this task's finished shards and rewrites those shards.
    """
    cfg = cfg or CurationConfig()
    out_dir = StageDir(out_dir)
    shards = plan_shards(sources, videos_per_shard)
    settings = dataclasses.asdict(cfg)
    for part in ("scenes", "extract"):
        settings[part].pop("threads")  # how fast, not what: tasks may differ
    record_or_check_settings(out_dir, {"config": settings, "videos_per_shard": videos_per_shard,
                           "num_sources": len(sources), "sources_sha256": _sources_digest(sources)},
                             introduced={"config": {"scenes": scenes.SETTINGS_INTRODUCED}})
    mine = task_shards(len(shards), task, num_tasks)
    pending = [s for s in mine if not out_dir.exists(stats_name(s))]
    finished = [s for s in mine if s not in pending]
    for s in finished:  # a kill between marking a shard done and removing its work dir
        shutil.rmtree(out_dir.work_root() / shard_name(s), ignore_errors=True)
    retry = {s: f for s in finished if retry_failed and (f := to_retry(out_dir, s, shards[s])) is not None}
    summary = StageSummary(out=str(out_dir), shards=len(mine), skipped=len(finished) - len(retry))
    inputs = {s: ShardInput(retry[s].sources, retry[s]) if s in retry else ShardInput(shards[s])
              for s in sorted([*pending, *retry])}
    job = ShardJob(SourceShards(out_dir.url, cfg, workers, budget or TimeBudget()), inputs, unit="video",
                   cpus=max(workers, 1), sizes={s: len(i.sources) for s, i in inputs.items()})
    started = time.time()
    with progress_bar(total=sum(job.sizes.values()), unit="video", enabled=progress, smoothing=0.1,
                      desc=f"task {task}/{num_tasks}: {len(pending)} shards, {len(retry)} to retry "
                           f"({summary.skipped} done before)") as bar:
        for shard, report in _run_job(engine or LocalEngine(), job, bar):
            stats = report["stats"]
            summary.retried += report["retried"]
            summary.done += not report["retried"]
            summary.videos += report["videos"]
            summary.kept += report["kept"]
            for reason, n in report["failed_by_reason"].items():
                summary.failed += n
                summary.failed_by_reason[reason] = summary.failed_by_reason.get(reason, 0) + n
            elapsed = max(time.time() - started, 1e-9)
            bar.set_postfix({"videos/s": f"{summary.videos / elapsed:.2f}", "clips/s": f"{summary.kept / elapsed:.1f}",
                             "failed": _reasons_text(summary.failed_by_reason)}, refresh=False)
            bar.write(f"shard {shard_name(shard)} {'retried' if report['retried'] else 'done'}: {stats['videos']} "
                      f"videos, {stats['kept']} clips kept, {stats['failed']} failed "
                      f"({_reasons_text(stats['failed_by_reason'])}), dropped {stats['dropped']}, "
                      f"{stats['cpu_seconds']:.1f} CPU s")
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
    advance: Advance = lambda n: None


@dataclass
class TableShards:
    """The shard job of a table stage: ``make_process()`` builds the process (its models) once per runner."""

    in_dir: str
    out_dir: str
    clips_dir: str
    make_process: Callable[[], Callable[[TableShard], tuple[pa.Table, dict]]]

    def __call__(self) -> ShardRunner:
        process, in_dir, out_dir = self.make_process(), Path(self.in_dir), StageDir(self.out_dir)

        def run(shard: int, _: None, advance: Advance) -> dict:
            name = shard_name(shard)
            out_dir.remove_leftovers(f".{name}.parquet.tmp*")  # a killed run's partial table
            table, stats = process(TableShard(shard, pq.read_table(in_dir / f"{name}.parquet"),
                                              Path(self.clips_dir), advance))
            write_table(table, out_dir.path(f"{name}.parquet"))
            atomic_json(out_dir.path(stats_name(shard)), {"shard": shard, **stats})  # last: marks the shard done
            return stats
        return run


def _kept_count(path: Path) -> int:
    """Kept rows of a clip table, from its status column alone."""
    status = pq.read_table(path, columns=["status"])["status"]
    return pc.sum(pc.equal(status, "kept")).as_py() or 0


def run_table_stage(in_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    make_process: Callable[[], Callable[[TableShard], tuple[pa.Table, dict]]], record: dict,
                    task: int = 0, num_tasks: int = 1, progress: bool = True,
                    engine: Engine | None = None) -> StageSummary:
    """Map a process over the finished shards of ``in_dir``: a clip table in, a table and stats out.

    ``make_process()`` builds it (models and all) where a shard first needs it: once in this process,
    once per actor on Ray, so a finished or mismatched run loads nothing.

    Captioning and scoring add columns this way, with the same contract as :func:`run_stage`:
    ``{s:05d}.parquet`` then ``{s:05d}.stats.json`` (the done mark), reruns skip done shards,
    ``record`` is checked against ``config.json``, task ``i`` of ``N`` owns shards ``s % N == i``.
    Shards that ``in_dir`` has not finished yet are left for a later run. The clips stay in the
    first stage's tars; ``clips_dir`` is recorded so the next table stage finds them too.
    """
    task_shards(0, task, num_tasks)  # checks the array position
    in_dir, out_dir = Path(in_dir), StageDir(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input stage directory not found: {in_dir}")
    clips_dir = clips_dir_of(in_dir)
    record_or_check_settings(out_dir, {**record, "input": str(in_dir.resolve()), "clips_dir": str(clips_dir)})
    finished = sorted(int(p.name[:-len(STATS_SUFFIX)]) for p in in_dir.glob(f"*{STATS_SUFFIX}"))
    mine = [s for s in finished if s % num_tasks == task]
    pending = [s for s in mine if not out_dir.exists(stats_name(s))]
    summary = StageSummary(out=str(out_dir), unit="clip", shards=len(mine), skipped=len(mine) - len(pending))
    job = ShardJob(TableShards(str(in_dir.resolve()), out_dir.url, str(clips_dir), make_process),
                   dict.fromkeys(pending), unit="clip", model=True,
                   sizes={s: _kept_count(in_dir / f"{shard_name(s)}.parquet") for s in pending})
    started = time.time()
    with progress_bar(total=sum(job.sizes.values()), unit="clip", enabled=progress,
                      desc=f"task {task}/{num_tasks}: {len(pending)} shards ({summary.skipped} done before)") as bar:
        for _, stats in _run_job(engine or LocalEngine(), job, bar):
            summary.done += 1
            summary.kept += stats.get("clips", 0)
            summary.failed += stats.get("failed", 0)
            for name, n in stats.items():
                if name != "shard" and isinstance(n, int) and not isinstance(n, bool):
                    summary.counts[name] = summary.counts.get(name, 0) + n
    summary.seconds = time.time() - started
    return summary
