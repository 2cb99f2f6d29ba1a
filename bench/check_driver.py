"""The supervision of ``bench/gpu_check.py``: sections in their own process groups under one deadline.

A lent GPU machine gives one command of at most 10 minutes, so what matters is that the table comes
back whatever happens: each section runs as a subprocess in a new session (its ``train.py`` runs and
loader workers share its process group), its box is at most the time left before the one deadline, a
section past its box has its whole group killed (``killpg``) and keeps the rows it printed and the tail
of its stderr, every finished section's rows go to a JSON-lines file at once (fsynced), and the table
of what finished is printed at the end, also when the check itself is interrupted (SIGTERM, Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROW_PREFIX = "ROW "
MIN_BOX = 10.0  # seconds: a section given less is skipped (an interpreter and CUDA start take several)
TABLE_RESERVE = 2.0  # seconds kept back from the deadline for printing the table


def row(item: str, value: str, **fields) -> None:
    """One table row, printed at once (a section killed by its box keeps the rows it printed)."""
    print(ROW_PREFIX + json.dumps({"item": item, "value": value, **fields}), flush=True)


@dataclass
class SectionResult:
    name: str
    rows: list[dict] = field(default_factory=list)
    status: str = "not run"

    @property
    def ok(self) -> bool:
        return self.status.startswith("ok")


def stderr_tail(text: str, lines: int = 3) -> str:
    """The last non-empty lines of a section's stderr, joined on one line (what the table can show)."""
    kept = [x.strip() for x in text.splitlines() if x.strip() and "HYDRA_FULL_ERROR" not in x]
    return " | ".join(kept[-lines:])[-400:]


def run_section(name: str, cmd: list[str], box: float, cwd: Path | None = None) -> SectionResult:
    """Run one section's command for at most ``box`` seconds; past it, kill its whole process group."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=box)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    except BaseException:  # the check itself is interrupted: take the section's children with it
        kill_group(proc.pid)
        proc.wait()
        raise
    kill_group(proc.pid)  # a section that exited may have left a child behind (a DataLoader worker, train.py)
    rows = [json.loads(line[len(ROW_PREFIX):]) for line in out.splitlines() if line.startswith(ROW_PREFIX)]
    took = time.monotonic() - start
    tail = stderr_tail(err)
    if timed_out:
        status = f"timed out after {box:.0f} s (time box)" + (f": {tail}" if tail else "")
    elif proc.returncode:
        status = f"failed in {took:.0f} s: {tail or 'exit ' + str(proc.returncode)}"
    else:
        status = f"ok in {took:.0f} s"
    return SectionResult(name, rows, status)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def append_jsonl(path: Path | None, result: SectionResult) -> None:
    """The section's rows and status as JSON lines, on disk before the next section starts."""
    if path is None:
        return
    with open(path, "a") as f:
        f.writelines(json.dumps({"section": result.name, **r}) + "\n" for r in result.rows)
        f.write(json.dumps({"section": result.name, "status": result.status}) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Terminated(Exception):
    """SIGTERM arrived: stop starting sections and print the table of what finished."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def run_all(plan: list[tuple[str, float]], command, deadline: float, jsonl: Path | None = None,
            on_result=None, cwd: Path | None = None) -> tuple[list[SectionResult], str | None]:
    """Sections in ``plan`` order (name, box), each boxed by ``min(box, time left)``.

    ``command(name)`` gives a section's command line (called just before it starts, so that it can use
    earlier sections' rows); ``on_result(result)`` sees each result as it comes. Returns the results and,
    when the run was cut short, why.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    results: list[SectionResult] = []
    stopped = None
    try:
        for name, box in plan:
            left = deadline - time.monotonic() - TABLE_RESERVE
            if min(box, left) < MIN_BOX:
                result = SectionResult(name, status=f"skipped: {max(left, 0):.0f} s left before the deadline")
            else:
                result = run_section(name, command(name), min(box, left), cwd)
            results.append(result)
            append_jsonl(jsonl, result)
            if on_result is not None:
                on_result(result)
    except (Terminated, KeyboardInterrupt) as e:
        stopped = f"interrupted ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results, stopped


def format_table(results: list[SectionResult], annotate=None) -> str:
    """The table: one line per row, plus a line for each section that did not finish cleanly."""
    width = max((len(r["item"]) for res in results for r in res.rows), default=20)
    width = max(width, len("(section)"))
    lines = [f"{'section':<10} {'what':<{width}}  result"]
    for res in results:
        for r in res.rows:
            value = annotate(r) if annotate else r["value"]
            lines.append(f"{res.name:<10} {r['item']:<{width}}  {value}")
        if not res.ok:
            lines.append(f"{res.name:<10} {'(section)':<{width}}  {res.status}")
    return "\n".join(lines)
