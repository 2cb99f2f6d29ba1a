"""Progress and time left for long jobs: a tqdm bar on a terminal, plain log lines elsewhere, or nothing.

A SLURM log or a pipe is not a terminal: a redrawn bar there is a wall of carriage returns, so
:func:`progress` writes one line every ``interval`` seconds instead (done/total, rate, elapsed, ETA
at the mean rate so far), and a last one when the job ends (a job shorter than that prints none).
``enabled=False`` (``--no-progress``, ``progress=false``) shows nothing; ``write()`` messages (a
shard done) go to stdout either way.
This module imports nothing else of the package, so every layer may use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm
from typing_extensions import Self

LOG_INTERVAL_S = 30.0


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far; None without a total or before any progress."""
    if total is None or done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day), ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} days, {text}" if days else text


class LogProgress:
    """The subset of tqdm's interface the package uses, written as a log line every ``interval`` seconds."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", interval: float | None = None, file: IO[str] | None = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.file = file or sys.stderr
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._logged_n: float | None = None
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval and self.n != self._logged_n:
            self._last = now
            self._log(now)

    def set_postfix(self, postfix: dict[str, Any] | None = None, refresh: bool = False) -> None:
        self.postfix = dict(postfix or {})

    def write(self, message: str) -> None:
        """A message of the job (not progress): to stdout, as ``tqdm.write`` does."""
        print(message, flush=True)

    def line(self, now: float | None = None) -> str:
        """``desc: done/total unit (pct) | rate | elapsed | ETA | postfix``."""
        elapsed = (now if now is not None else time.monotonic()) - self._start
        done = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.1f}%)"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = eta_seconds(self.n, self.total, elapsed)
        parts = [f"{self.desc}: {done}" if self.desc else done, f"{rate:.3g} {self.unit}/s",
                 f"elapsed {format_duration(elapsed)}", f"ETA {format_duration(eta)}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return " | ".join(parts)

    def _log(self, now: float) -> None:
        self._logged_n = self.n
        print(self.line(now), file=self.file, flush=True)

    def close(self) -> None:
        """Log the final count when the job logged before or lasted an interval; a short job stays quiet."""
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if self.n != self._logged_n and (self._logged_n is not None or now - self._start >= self.interval):
            self._log(now)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, interval: float | None = None, file: IO[str] | None = None,
             **tqdm_kwargs: Any) -> tqdm | LogProgress:
    """A progress display for ``iterable`` (or ``update()`` calls): a tqdm bar when ``file`` (stderr) is
    a terminal, :class:`LogProgress` lines (every ``interval`` s, default :data:`LOG_INTERVAL_S`)
    otherwise, a silent (disabled) tqdm when not ``enabled``."""
    file = file or sys.stderr
    if not enabled or file.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, file=file, **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, interval=interval, file=file)
