"""The run directory: ours or refused, held by one run at a time, and its resolved ``config.yaml``.

A directory is ours when it holds :data:`MARKER` (written at a run's first start, before anything
else) or a checkpoint with our per-rank files (a run begun before the marker existed). Any other
non-empty directory holds someone else's files (a shard folder, another tool's output), and training
there would overwrite its ``config.yaml`` and append to its ``metrics.jsonl``, so it is refused.
While a run trains, rank 0 holds an exclusive ``flock`` on :data:`LOCK` (released by the kernel when
the process dies, so a killed run leaves no stale lock); a second run on the same directory is
refused with the holder's pid. Nothing here deletes a file.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from viclip.atomic import atomic_write
from viclip.distributed import DistInfo, broadcast_object
from viclip.errors import ConfigError, OutputError

MARKER = ".viclip-run"
LOCK = ".viclip-run.lock"


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.viclip-run.lock``, held until :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise OutputError(f"output_dir={run_dir}: another training run (pid {holder}) is using it; wait for it "
                              "to end or choose another run_name/output_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (deleting it would race a new holder)
            self.fd = None


def claim_run_dir(run_dir: Path, info: DistInfo) -> RunDirLock | None:
    """Rank 0 claims ``run_dir`` (:func:`claim`) and holds its lock; every rank raises the refusal. Collective."""
    why, lock = None, None
    if info.is_main:
        try:
            lock = claim(run_dir)
        except OutputError as e:
            why = str(e)
    why = broadcast_object(why)
    if why is not None:
        raise OutputError(why)
    return lock


def claim(run_dir: Path) -> RunDirLock:
    """Refuse a non-empty directory that is not a run of ours, then mark it ours and lock it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"output_dir={run_dir} is a file, not a directory")
    ours = (run_dir / MARKER).is_file() or any(run_dir.glob("checkpoints/step_*/rank*.pt"))
    if run_dir.is_dir() and not ours:
        entries = sorted(p.name for p in run_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputError(f"output_dir={run_dir} holds files that no training run of ours wrote ({shown}); "
                              "choose an empty or new directory (output_dir=... or run_name=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(run_dir)
    if not (run_dir / MARKER).is_file():
        atomic_write(run_dir / MARKER, "a viclip training run directory\n")
    return lock


def save_resolved_config(cfg: DictConfig, run_dir: Path, info: DistInfo) -> None:
    """Write ``config.yaml`` once, after checking that every rank resolved the same config."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = [None] * info.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise ConfigError("the resolved config differs between ranks (environment variables differ between "
                           "nodes?); every rank must train the same config")
    if info.is_main:
        atomic_write(run_dir / "config.yaml", text)
