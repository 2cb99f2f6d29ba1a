"""Supervised worker processes for a curation stage: no single source can stall or stop the run.

Each worker holds one video at a time and the parent watches all of them. A video that outlives its
:class:`TimeBudget` has its worker killed (SIGKILL: a decoder spinning in C ignores anything milder)
and becomes a ``timeout`` row; a worker that dies while holding a video (a decoder segfault, the OOM
killer) costs that video a ``crashed`` row. Either way a fresh worker takes its place and the run
goes on. Workers are forked, so they inherit the parent's modules as they are when the stage starts.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from viclip.curation.clips import CurationConfig, VideoResult, failed_result, process_source
from viclip.curation.errors import SourceError
from viclip.curation.sources import Source
from viclip.errors import ConfigError

SHUTDOWN_SECONDS = 5.0  # how long an idle worker gets to exit on its own before it is killed


@dataclass(frozen=True)
class TimeBudget:
    """Wall seconds a video may hold its worker: ``base + factor * source duration``.

    Scene splitting runs at about 3 source minutes per core-minute at 720p, i.e. a third of real
    time, so ``factor=4`` leaves 12x the usual time (room for 4K sources and a busy node) before a
    video is judged hung. ``base`` covers what comes before the duration is known (the fetch of a
    remote source, opening the container): it is all a source gets whose header has no duration.
    """

    base: float = 120.0
    factor: float = 4.0

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ConfigError(f"time budget base must be > 0 seconds (--budget-base), got {self.base}")
        if not self.factor >= 0:
            raise ConfigError(f"time budget factor must be >= 0 (--budget-factor), got {self.factor}")

    def seconds(self, duration: float | None) -> float:
        return self.base + self.factor * (duration or 0.0)


def _serve(conn: Connection, inherited: list[Connection], cfg: CurationConfig) -> None:
    """Worker loop: a source in, its duration (once probed) and its result out, until told to stop."""
    import cv2

    for c in inherited:  # the parent's ends of other pipes: closed so a dead parent means EOF here
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend
    while True:
        try:
            source = conn.recv()
        except EOFError:
            return
        if source is None:
            return
        result = process_source(source, cfg, lambda duration: conn.send(("duration", duration)))
        conn.send(("result", result))


class _Worker:
    """A worker process, the parent's end of its pipe, and the video it holds with that video's deadline."""

    def __init__(self, ctx: mp.context.BaseContext, cfg: CurationConfig, others: list[Connection]) -> None:
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(target=_serve, args=(child, [*others, self.conn], cfg),
                                                daemon=True, name="curation-worker")
        self.process.start()
        child.close()
        self.job: int | None = None
        self.source: Source | None = None
        self.started = 0.0
        self.deadline = math.inf

    def assign(self, job: int, source: Source, budget: TimeBudget) -> None:
        with contextlib.suppress(OSError):  # died just now: seen as a crash on the next check
            self.conn.send(source)
        self.job, self.source = job, source
        self.started = time.monotonic()
        self.deadline = self.started + budget.seconds(None)

    def release(self) -> None:
        self.job, self.source, self.deadline = None, None, math.inf

    def stop(self) -> None:
        """Ask an idle worker to exit; kill a busy one (its video is abandoned)."""
        if self.job is None:
            try:
                self.conn.send(None)
                return
            except OSError:
                pass
        self.process.kill()

    def reap(self) -> None:
        self.process.join(SHUTDOWN_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def process_sources(sources: Sequence[Source], cfg: CurationConfig, workers: int,
                    budget: TimeBudget | None = None, window: int | None = None) -> Iterator[VideoResult]:
    """Results of :func:`process_source` for ``sources``, in their order, with at most ``window``
    videos in flight or waiting (default ``2 * workers``), so memory stays bounded.

    ``workers=0`` runs each source in this process, for debugging: no time budget, and a crash or
    hang there is the run's. Close the iterator (``contextlib.closing``) to stop the workers at once
    when the caller stops early or raises.
    """
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if workers == 0:
        for source in sources:
            yield process_source(source, cfg)
        return
    budget = budget or TimeBudget()
    window = max(window or 2 * workers, 1)
    ctx = mp.get_context("fork")  # inherit the parent's modules, test hooks included
    pool: list[_Worker] = []
    for _ in range(min(workers, len(sources))):
        pool.append(_Worker(ctx, cfg, [w.conn for w in pool]))
    results: dict[int, VideoResult] = {}
    handed = yielded = 0
    try:
        while True:
            while yielded in results:
                yield results.pop(yielded)
                yielded += 1
            if yielded == len(sources):
                break
            for i, w in enumerate(pool):
                if w.job is None and handed < len(sources) and handed - yielded < window:
                    if not w.process.is_alive():  # died idle (the OOM killer picks any process)
                        w.reap()
                        pool[i] = w = _Worker(ctx, cfg, [x.conn for x in pool if x is not w])
                    w.assign(handed, sources[handed], budget)
                    handed += 1
            busy = [w for w in pool if w.job is not None]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                failure = _receive(w, budget, results)
                if failure is not None:
                    w.process.kill()
                    w.reap()
                    results[w.job] = failed_result(w.source, failure)
                    results[w.job].seconds = time.monotonic() - w.started
                    pool[i] = _Worker(ctx, cfg, [x.conn for x in pool if x is not w])
    finally:
        for w in pool:
            w.stop()
        for w in pool:
            w.reap()


def _receive(w: _Worker, budget: TimeBudget, results: dict[int, VideoResult]) -> SourceError | None:
    """Read what a busy worker sent; the error its video fails with if the worker died or ran out of time.

    Messages are read before the worker's death or deadline is judged, so a result that arrived while
    the parent was busy writing a shard always counts.
    """
    try:
        while w.conn.poll():
            kind, value = w.conn.recv()
            if kind == "duration":
                w.deadline = w.started + budget.seconds(value)
            else:
                results[w.job] = value
                w.release()
                return None
    except (EOFError, OSError):  # died, perhaps midway through a message
        w.process.join(SHUTDOWN_SECONDS)
    if not w.process.is_alive():
        return SourceError("crashed", f"{w.source.uri}: the worker died ({_death(w.process.exitcode)}) "
                                      "while processing this video")
    if time.monotonic() > w.deadline:
        held = time.monotonic() - w.started
        return SourceError("timeout", f"{w.source.uri}: still running after {held:.0f} s, over its "
                                      f"time budget of {w.deadline - w.started:.0f} s; the worker was killed")
    return None
