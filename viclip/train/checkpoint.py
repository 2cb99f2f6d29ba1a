"""Atomic DeepSpeed checkpoints with a ``latest`` pointer, keep-last-K pruning and ``resume=auto``.

Layout under ``root``: one directory per checkpoint, ``step_00001234/`` (DeepSpeed's model and
optimizer files, our train state as DeepSpeed client state, and ``rank00000.pt`` ... holding each
rank's data-stream position and RNG states), plus ``latest`` (the newest tag; the same file
DeepSpeed's own tools read).

Every file of a checkpoint is read with ``torch.load(weights_only=True)`` (:func:`load_file`), the
engine's too (:func:`restricted_loads` replaces DeepSpeed's loader, which unpickles anything): a
planted pickle cannot run code on resume. DeepSpeed's optimizer files need a few of its own plain
classes (:data:`DEEPSPEED_GLOBALS`), allowed by name and rebuilt from data only.

A checkpoint is written as ``.tmp-step_...`` and renamed once every rank has finished, so a
directory with a final name is always complete; ``latest`` is written after the rename; pruning
renames a directory to ``.trash-...`` before deleting it. A SIGKILL at any moment therefore leaves
either the previous or the new checkpoint as the newest complete one.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viclip.atomic import atomic_rename, atomic_write
from viclip.distributed import barrier
from viclip.errors import ConfigError, DataError, UnsafeFileError

LATEST = "latest"
_TAG_RE = re.compile(r"^step_(\d{8,})$")
_OPTIM_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")  # bf16_ prefixed in bf16 runs


def deepspeed_globals() -> list:
    """The classes DeepSpeed's ZeRO optimizer files pickle besides tensors and containers: data holders
    without code on load (a loss-scale record, a fragment address, a stage enum)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_file(path: str | os.PathLike, map_location=None) -> Any:
    """A checkpoint file read with ``weights_only=True`` (plus :func:`deepspeed_globals`); a file that
    would run code is an UnsafeFileError, a missing, truncated or corrupt one a DataError, both naming it."""
    try:
        with torch.serialization.safe_globals(deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(f"{path}: refused to load, it needs code beyond tensors and plain data to unpickle "
                              f"({_refusal(e)}); resume only checkpoints that this project's runs wrote") from e
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing from the checkpoint; resume from another one (resume=PATH)") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupt ({str(e).strip().splitlines()[0]}); resume from another "
                        "checkpoint (resume=PATH)") from e


def _refusal(e: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that names the global, without its advice to load unsafely."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if "global" in line.lower()]
    return lines[0].split(" was not an allowed global")[0].rstrip(".") if lines else "not a weights-only pickle"


class RestrictedLoads:
    """DeepSpeed's checkpoint engine with :func:`load_file` as its ``load``; everything else delegated."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None) -> Any:
        return load_file(path, map_location)


def restricted_loads(engine) -> None:
    """Make every file ``engine.load_checkpoint`` reads go through :func:`load_file` (idempotent)."""
    if not isinstance(engine.checkpoint_engine, RestrictedLoads):
        engine.checkpoint_engine = RestrictedLoads(engine.checkpoint_engine)


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
    """The newest complete checkpoint directory. ``latest`` is not read: it is written for DeepSpeed's
    own tools, and a kill between a checkpoint's rename and the pointer's write leaves it one behind."""
    tags = complete_tags(root)
    return tags[-1] if tags else None


class Checkpointer:
    """Saves and restores the sum of the explicit states: engine (model, optimizer), train state, per-rank state."""

    def __init__(self, root: str | os.PathLike, keep: int, rank: int, world_size: int) -> None:
        if keep < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1, got {keep}")
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
            raise ConfigError(f"resume={resume}: no complete checkpoint (step_* directory) there")
        return path / tag

    def load(self, engine, ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the engine in place; return (train state, this rank's state)."""
        self.check_rank_files(ckpt_dir)
        restricted_loads(engine)
        _, client = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
        if client is None or "train_state" not in client:
            raise DataError(f"{ckpt_dir}: DeepSpeed found no model states of a training run there "
                            "(mp_rank_00_model_states.pt); resume from another checkpoint (resume=PATH)")
        return client["train_state"], load_file(ckpt_dir / f"rank{self.rank:05d}.pt", map_location="cpu")

    def check_rank_files(self, ckpt_dir: Path) -> None:
        """One ``rankNNNNN.pt`` per rank of this run: each rank's data position lives in its own file."""
        found = {int(p.stem[4:]) for p in ckpt_dir.glob("rank[0-9]*.pt") if p.stem[4:].isdigit()}
        # DeepSpeed writes one optimizer file per data-parallel rank: the world size even if rank files are lost
        optim = {int(m.group(1)) for p in ckpt_dir.glob("*zero_pp_rank_*_optim_states.pt")
                 if (m := _OPTIM_RE.search(p.name))}
        saved_world = max(found | optim) + 1 if found | optim else 0
        missing = sorted(set(range(max(saved_world, 1))) - found)
        if missing:
            raise DataError(f"{ckpt_dir / f'rank{missing[0]:05d}.pt'}: missing from the checkpoint; resume from "
                            "another one (resume=PATH)")
        if saved_world != self.world_size:
            raise ConfigError(f"{ckpt_dir} was written by {saved_world} ranks; resuming with {self.world_size} would "
                              f"change every rank's data position: launch {saved_world} ranks")
