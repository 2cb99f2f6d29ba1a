"""Atomic DeepSpeed checkpoints with a ``latest`` pointer, keep-last-K pruning and ``resume=auto``.

Layout under ``root``: one directory per checkpoint, ``step_00001234/`` (DeepSpeed's model and
optimizer files, our train state as DeepSpeed client state, and ``rank00000.pt`` ... holding each
rank's data-stream position and RNG states), plus ``latest`` (the newest tag; the same file
DeepSpeed's own tools read).

A checkpoint is written as ``.tmp-step_...`` and renamed once every rank has finished, so a
directory with a final name is always complete; ``latest`` is written after the rename; pruning
renames a directory to ``.trash-...`` before deleting it. A SIGKILL at any moment therefore leaves
either the previous or the new checkpoint as the newest complete one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viclip.atomic import atomic_rename, atomic_write
from viclip.distributed import barrier

LATEST = "latest"
_TAG_RE = re.compile(r"^step_(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (masking noise, drop-path, augmentation)."""
    # numpy's key array travels as a tensor so the file loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def complete_tags(root: Path) -> list[str]:
    """Tags of complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and _TAG_RE.match(p.name)]
    return sorted(tags, key=lambda t: int(_TAG_RE.match(t).group(1)))


def newest_tag(root: Path) -> str | None:
    """The newest complete checkpoint: ``latest`` if it names one, or a newer complete directory.

    A directory can be newer than ``latest`` when a run was killed between the rename and the
    pointer write; it is complete, so it is used.
    """
    tags = complete_tags(root)
    if not tags:
        return None
    pointer = root / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    return named if named == tags[-1] else tags[-1]


class Checkpointer:
    """Saves and restores the sum of the explicit states: engine (model, optimizer), train state, per-rank state."""

    def __init__(self, root: str | os.PathLike, keep: int, rank: int, world_size: int) -> None:
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep, self.rank, self.world_size = keep, rank, world_size

    def clean_incomplete(self) -> None:
        """Remove leftovers of saves or prunes that a kill interrupted (rank 0, before any save)."""
        if self.rank == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
        barrier()

    def save(self, engine, step: int, train_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """Collective: every rank calls it at the same step. Returns the final directory."""
        tag = tag_for(step)
        final = self.root / tag
        if final.is_dir():  # already saved at this step (a phase end that is also a periodic save)
            return final
        tmp_tag = f".tmp-{tag}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / tmp_tag, ignore_errors=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tmp_tag, client_state={"train_state": train_state},
                               save_latest=False)
        torch.save(rank_state, self.root / tmp_tag / f"rank{self.rank:05d}.pt")
        barrier()
        if self.rank == 0:
            atomic_rename(self.root / tmp_tag, final)
            atomic_write(self.root / LATEST, tag)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        for tag in complete_tags(self.root)[:-self.keep]:
            trash = self.root / f".trash-{tag}"
            atomic_rename(self.root / tag, trash, durable=False)  # deleted next; a crash leaves trash to clean
            shutil.rmtree(trash, ignore_errors=True)

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint directory ``resume`` designates: None, ``auto`` (newest here, or none) or a path.

        A path may name a checkpoint directory or a root holding them.
        """
        if resume in (None, "", "none"):
            return None
        if resume == "auto":
            tag = newest_tag(self.root)
            return self.root / tag if tag else None
        path = Path(resume)
        if _TAG_RE.match(path.name) and path.is_dir():
            return path
        tag = newest_tag(path)
        if tag is None:
            raise FileNotFoundError(f"resume={resume!r}: no complete checkpoint (step_* directory) there")
        return path / tag

    def load(self, engine, ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the engine in place; return (train state, this rank's state)."""
        rank_file = ckpt_dir / f"rank{self.rank:05d}.pt"
        saved_world = len(list(ckpt_dir.glob("rank*.pt")))
        if saved_world != self.world_size:
            raise RuntimeError(f"checkpoint {ckpt_dir} was written by {saved_world} ranks; resuming with "
                               f"{self.world_size} would change every rank's data position")
        _, client = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
        if client is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
        return client["train_state"], rank_state
