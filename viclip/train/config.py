"""Checks of the composed training config, run before any work, with errors that name the field."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from viclip.data.corpora import Corpus, corpus_num_samples
from viclip.data.tars import expand_shards
from viclip.errors import ConfigError
from viclip.model import get_config
from viclip.train.engine import PHASE_OPTIMIZER
from viclip.train.logger import LOGGERS
from viclip.train.loss import SAME_VIDEO_CHOICES

_ENV_DEFAULT_MISSING = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*),\s*'\?\?\?'\}")


@dataclass(frozen=True)
class Phase:
    """One training phase: its length in epochs, masking, learning-rate schedule and clips per rank and
    micro-step (``phases.<name>.batch_size``, else ``train.batch_size``); a phase's epoch is of its own
    batches, so its step count follows from its batch size."""

    name: str
    epochs: float
    mask_ratio: float
    lr: float
    warmup_epochs: float
    min_lr_ratio: float
    batch_size: int
    min_lr: float | None = None  # an absolute floor instead of min_lr_ratio (UMT's --min_lr)
    warmup_lr: float = 0.0  # the warm-up's first lr (UMT's --warmup_lr); 0: from lr / warmup steps


def _walk(node, prefix: str = ""):
    """(dotted key, unresolved value) for every leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def missing_fields(cfg: DictConfig) -> list[str]:
    """Unset fields: '???' values, and '${oc.env:VAR,'???'}' whose variable is unset; each with how to set it."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    out = []
    for key, value in _walk(raw):
        if key.startswith("hydra."):
            continue
        if value == "???":
            out.append(f"{key} (set {key}=...)")
            continue
        m = _ENV_DEFAULT_MISSING.fullmatch(str(value)) if isinstance(value, str) else None
        if m and m.group(1) not in os.environ:
            out.append(f"{key} (set {key}=... or the environment variable {m.group(1)})")
    return out


def phases_of(cfg: DictConfig) -> list[Phase]:
    """The phases in config order; those with ``epochs: 0`` are dropped."""
    phases = []
    for name, p in cfg.phases.items():
        for field in ("epochs", "mask_ratio", "lr", "warmup_epochs", "min_lr_ratio"):
            if field not in p:
                raise ConfigError(f"phases.{name}.{field} is not set")
        ph = Phase(name, float(p.epochs), float(p.mask_ratio), float(p.lr), float(p.warmup_epochs),
                   float(p.min_lr_ratio), int(p.get("batch_size") or cfg.train.batch_size),
                   None if p.get("min_lr") is None else float(p.min_lr), float(p.get("warmup_lr") or 0.0))
        if ph.batch_size < 1:
            raise ConfigError(f"phases.{name}.batch_size must be >= 1 (or null: train.batch_size), got {ph.batch_size}")
        if ph.epochs < 0 or ph.lr <= 0 or not 0 <= ph.warmup_epochs <= max(ph.epochs, 0):
            raise ConfigError(f"phases.{name}: need epochs >= 0, lr > 0 and 0 <= warmup_epochs <= epochs, got "
                              f"epochs={ph.epochs}, lr={ph.lr}, warmup_epochs={ph.warmup_epochs}")
        if not 0.0 <= ph.mask_ratio < 1.0:
            raise ConfigError(f"phases.{name}.mask_ratio must lie in [0, 1), got {ph.mask_ratio}")
        if ph.epochs > 0:
            phases.append(ph)
    if not phases:
        raise ConfigError("phases: every phase has epochs 0; nothing to train")
    return phases


def steps_per_epoch(cfg: DictConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of an epoch of ``batches_per_epoch`` batches per rank (``train.steps_per_epoch`` wins)."""
    return int(cfg.train.steps_per_epoch or 0) or max(1, batches_per_epoch // int(cfg.train.grad_accum))


def phase_steps(phase: Phase, per_epoch: int) -> int:
    """Optimizer steps of a whole phase: its epochs of ``per_epoch`` steps, at least one."""
    return max(1, round(phase.epochs * per_epoch))


def plan(cfg: DictConfig, world_size: int) -> list[str]:
    """Each phase's batch, steps per epoch and steps at ``world_size`` ranks, from the data config's
    ``num_samples`` (``dry_run=N``: the step counts of a run before any shard is at hand), or, where that
    is unset (``data=shards``), from the shards' ``sizes.json`` as training counts them."""
    sizes = {name: src.get("num_samples") for name, src in cfg.data.sources.items()}
    counted = {}
    for name, src in cfg.data.sources.items():
        if sizes[name] is None:
            shards = src.shards if isinstance(src.shards, str) else list(src.shards)
            counted[name] = corpus_num_samples(Corpus(shards=shards, name=name), expand_shards(shards))
    samples = sum(int(n) for n in sizes.values() if n is not None) + sum(counted.values())
    source = "sizes.json" if counted else "num_samples"
    lines = [f"{samples} clips per epoch ({source}), {world_size} ranks, {cfg.train.grad_accum} accumulation"]
    for phase in phases_of(cfg):
        global_batch = phase.batch_size * world_size * int(cfg.train.grad_accum)
        per_epoch = steps_per_epoch(cfg, samples // (phase.batch_size * world_size))
        lines.append(f"[{phase.name}] {phase_steps(phase, per_epoch)} steps ({phase.epochs:g} epochs of {per_epoch}) "
                     f"at {phase.batch_size} clips per rank ({global_batch} per step), mask_ratio {phase.mask_ratio}, "
                     f"lr {phase.lr:g}")
    return lines


def check_missing(cfg: DictConfig) -> None:
    """Raise ConfigError naming every unset path (:func:`missing_fields`)."""
    missing = missing_fields(cfg)
    if missing:
        raise ConfigError("required config field(s) not set: " + "; ".join(missing))


def check_run_fields(cfg: DictConfig) -> None:
    """The fields every Trainer reads (pre-training and fine-tuning): loss, logger, train.*, phases."""
    if cfg.loss.same_video not in SAME_VIDEO_CHOICES:
        raise ConfigError(f"loss.same_video must be one of {SAME_VIDEO_CHOICES}, got {cfg.loss.same_video!r}")
    if cfg.logger not in LOGGERS:
        raise ConfigError(f"logger must be one of {LOGGERS}, got {cfg.logger!r}")
    for field in ("batch_size", "grad_accum", "max_bad_steps", "log_every", "ckpt_every", "keep_checkpoints"):
        if int(cfg.train[field]) < 1:
            raise ConfigError(f"train.{field} must be >= 1, got {cfg.train[field]}")
    if cfg.train.phase_optimizer not in PHASE_OPTIMIZER:
        raise ConfigError(f"train.phase_optimizer must be one of {PHASE_OPTIMIZER}, got {cfg.train.phase_optimizer!r}")
    phases_of(cfg)


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming every unset path and the first invalid field; does no work."""
    check_missing(cfg)
    try:
        get_config(cfg.model.name, **OmegaConf.to_container(cfg.model.overrides))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    if not cfg.data.get("sources"):
        raise ConfigError("data.sources is empty: name at least one shard set")
    for name, src in cfg.data.sources.items():
        if float(src.weight) <= 0:
            raise ConfigError(f"data.sources.{name}.weight must be > 0, got {src.weight}")
    check_run_fields(cfg)
