"""Metrics sinks of rank 0: a JSONL file in the run directory (always), wandb (optional), a console line."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

from viclip.atomic import atomic_write

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


def format_line(m: dict[str, Any]) -> str:
    """The console progress line."""
    parts = [f"[{m['phase']}] step {m['step']}/{m['steps']}",
             "loss n/a" if m["loss"] is None else f"loss {m['loss']:.4f}", f"lr {m['lr']:.3g}",
             *([] if m["temp"] is None else [f"temp {m['temp']:.4f}"]), f"clips/s {m['clips_per_s']:.1f}",
             f"data-wait {100 * m['data_wait']:.0f}%", f"skipped {m['skipped_samples']}",
             f"nonfinite {m['nonfinite_steps']}"]
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    return " | ".join(parts)


class MetricsLogger:
    """Writes each record as one JSON line and to wandb.

    A run that starts at ``start_step`` (the global step of the checkpoint it resumes, else 0) first
    drops the records a killed run logged after that step, which it is about to redo, so every
    ``global_step`` appears once.
    """

    def __init__(self, run_dir: Path, logger: str, run_name: str, config: dict, wandb_cfg: dict,
                 enabled: bool, start_step: int = 0) -> None:
        if logger not in LOGGERS:
            raise ValueError(f"logger must be one of {LOGGERS}, got {logger!r}")
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate(start_step)
        if logger == "wandb":
            import wandb

            self._wandb = wandb.init(project=wandb_cfg.get("project"), entity=wandb_cfg.get("entity"),
                                     name=run_name, id=run_name, resume="allow", dir=str(run_dir),
                                     config=config, mode=wandb_mode(wandb_cfg.get("mode")))

    def _truncate(self, last_step: int) -> None:
        """Keep the records up to ``last_step``. Not durable: a crash loses at most steps the run redoes."""
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("global_step", 0) <= last_step]
        atomic_write(self.path, "".join(kept), durable=False)

    def log(self, record: dict[str, Any], console: bool = True) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                            step=record.get("global_step"))
        if console:
            print(format_line(record), flush=True)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
