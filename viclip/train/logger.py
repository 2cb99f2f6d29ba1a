"""Metrics sinks of rank 0: a JSONL file in the run directory (always), wandb (optional), a console line.

A requeued run resumes from its last checkpoint, which is usually older than the last step it
logged. Both sinks then continue at the checkpoint's step: ``metrics.jsonl`` drops the records past
it (rewritten atomically), and the wandb run is rewound there with ``resume_from="{id}?_step={step}"``
(wandb >= 0.17.1; it keeps the steps up to the checkpoint and starts logging at the next one).
Plain ``resume="allow"`` would instead resume after the highest step wandb has and silently drop
every redone step below it. Rewind is a W&B preview feature: a server that refuses it gets a
warning and a plain resume. The resolved config, the git commit and the command line are logged
once, when the run starts from step 0.
"""

from __future__ import annotations

import json
import netrc
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from viclip.atomic import atomic_write
from viclip.errors import ConfigError
from viclip.progress import format_duration

LOGGERS = ("wandb", "none")


def wandb_mode(requested: str | None) -> str:
    """``online`` only with credentials: wandb without a key and without a mode fails at once."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def launch_info() -> dict[str, Any]:
    """The command line of this process and the git commit of the code it runs (None outside a checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], check=False, cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"command": shlex.join([sys.executable, *sys.argv]), "git_commit": commit,
            "git_dirty": None if dirty is None else bool(dirty)}


def format_line(m: dict[str, Any]) -> str:
    """The console progress line."""
    parts = [f"[{m['phase']}] step {m['step']}/{m['steps']}",
             "loss n/a" if m["loss"] is None else f"loss {m['loss']:.4f}", f"lr {m['lr']:.3g}"]
    if m.get("temp") is not None:
        parts.append(f"temp {m['temp']:.4f}")
    parts += [f"clips/s {m['clips_per_s']:.1f}", f"data-wait {100 * m['data_wait']:.0f}%",
              f"skipped {m['skipped_samples']}", f"nonfinite {m['nonfinite_steps']}"]
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    if m.get("steps_per_s") is not None:
        parts.append(f"steps/s {m['steps_per_s']:.3g}")
    if "elapsed_s" in m:
        parts.append(f"elapsed {format_duration(m['elapsed_s'])}")
    if "eta_phase_s" in m:
        parts.append(f"ETA phase {format_duration(m['eta_phase_s'])}, run {format_duration(m.get('eta_run_s'))}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes each record as one JSON line, to wandb, and (``console``) as a line on stdout.

    A run that starts at ``start_step`` (the global step of the checkpoint it resumes, else 0) first
    drops the records a killed run logged after that step, which it is about to redo, so every
    ``global_step`` appears once; the wandb run is rewound to the same step (module docstring).
    """

    def __init__(self, run_dir: Path, logger: str, run_name: str, config: dict, wandb_cfg: dict,
                 enabled: bool, start_step: int = 0, console: bool = True) -> None:
        if logger not in LOGGERS:
            raise ConfigError(f"logger must be one of {LOGGERS}, got {logger!r}")
        self.enabled, self.console = enabled, console
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        last_logged = self._truncate(start_step) if self.path.exists() else None
        if logger == "wandb":
            self._wandb = self._init_wandb(run_dir, run_name, config, wandb_cfg, start_step, last_logged)

    def _truncate(self, last_step: int) -> int | None:
        """Keep the records up to ``last_step``; returns the highest step logged before (None: no record).

        Not durable: a crash loses at most steps the run redoes."""
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        steps = [r.get("global_step", 0) for r in records]
        kept = [json.dumps(r) + "\n" for r, s in zip(records, steps) if s <= last_step]
        atomic_write(self.path, "".join(kept), durable=False)
        return max(steps, default=None)

    @staticmethod
    def _init_wandb(run_dir: Path, run_name: str, config: dict, wandb_cfg: dict, start_step: int,
                    last_logged: int | None) -> Any:
        import wandb

        common = {"project": wandb_cfg.get("project"), "entity": wandb_cfg.get("entity"), "name": run_name,
                  "dir": str(run_dir), "mode": wandb_mode(wandb_cfg.get("mode"))}
        if last_logged is not None and last_logged > start_step:
            try:
                return wandb.init(resume_from=f"{run_name}?_step={start_step}", **common)
            except wandb.Error as e:
                print(f"warning: wandb refused to rewind run {run_name!r} to step {start_step} ({e}); resuming it "
                      f"instead, which drops the redone steps {start_step + 1}..{last_logged} there", flush=True)
        launch = {**config, "launch": launch_info()} if start_step == 0 else None  # once: at the run's start
        return wandb.init(id=run_name, resume="allow", config=launch, **common)

    def log(self, record: dict[str, Any], console: bool | None = None) -> None:
        """``console`` (default: the logger's) prints the step line; records of other kinds pass False."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                            step=record.get("global_step"))
        if self.console if console is None else console:
            print(format_line(record), flush=True)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
