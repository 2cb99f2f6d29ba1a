"""AdamW parameter groups and the per-step warmup + cosine learning-rate schedule of each phase."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from viclip.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed weights, and the rest.

    No decay on biases, norms and other vectors (ndim < 2), nor on what ``model.no_weight_decay()``
    names (position/class/token embeddings, temp), as in CLIP and the official recipe. Frozen
    parameters (the text tower) are left out entirely, so the optimizer keeps no state for them.
    """
    skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("model: no trainable parameters (every tower frozen?); nothing to train")
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(groups: list[dict], lr: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """A plain torch AdamW over ``groups`` (e.g. :func:`param_groups`): DeepSpeed takes it as a client
    optimizer and compiles no Adam of its own."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine down to ``min_lr_ratio * base_lr``.

    ``min_lr`` replaces the floor by an absolute one; ``warmup_lr`` > 0 makes the warm-up VideoMAE/UMT's
    ``linspace(warmup_lr, base_lr, warmup_steps)`` (their ``utils.cosine_scheduler``).

    A pure function of the step, so a resumed run needs only the step to restore it.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.01
    min_lr: float | None = None
    warmup_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"a phase needs at least one step, got total_steps={self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in [0, total_steps={self.total_steps}]")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_lr > 0:
                return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / max(1, self.warmup_steps - 1)
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        floor = self.min_lr_ratio * self.base_lr if self.min_lr is None else self.min_lr
        return floor + (self.base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every parameter group, times the group's ``lr_scale`` when it has one (timm's
    layer-decay groups carry it); DeepSpeed's wrappers expose the inner groups."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
