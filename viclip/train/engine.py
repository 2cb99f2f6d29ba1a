"""What the Trainer asks of its DeepSpeed engine beyond a step: its config, fp32 weights, the official
export at a phase end and a fresh optimizer state at a phase start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from viclip.distributed import DistInfo
from viclip.model import ViCLIP, export_official

log = logging.getLogger(__name__)

PHASE_OPTIMIZER = ("fresh", "carry")  # train.phase_optimizer: the Adam state a later phase starts from


def vectorise_scalars(model: torch.nn.Module) -> None:
    """Give 0-dim parameters (``temp``) shape [1]: DeepSpeed 0.19's initial broadcast views every
    parameter as bytes, which fails on 0-dim tensors. The export restores the official shape []."""
    for p in model.parameters():
        if p.ndim == 0:
            p.data = p.data.reshape(1)


def deepspeed_config(cfg: DictConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The deepspeed group, plus batch sizes and clipping from train.*; on a CPU in float32 (the
    default group's bf16 runs slower on CPUs without bf16 units).

    The micro-batch size is the first phase's; DeepSpeed only reports it, so a later phase with its
    own ``batch_size`` needs no new engine.
    """
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    ds.update(
        train_micro_batch_size_per_gpu=int(cfg.train.batch_size),
        gradient_accumulation_steps=int(cfg.train.grad_accum),
        train_batch_size=int(cfg.train.batch_size) * int(cfg.train.grad_accum) * world_size,
        gradient_clipping=float(cfg.train.grad_clip),
        steps_per_print=2**31 - 1,  # our own logger prints
    )
    if device.type == "cpu" and ds.get("bf16", {}).get("enabled"):
        log.warning("deepspeed.bf16.enabled on a CPU: training in float32 (as deepspeed=cpu_fp32)")
        ds["bf16"] = {"enabled": False}
    return ds


def fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's state dict with every trained parameter replaced by its fp32 master copy (gathered
    across ZeRO partitions); frozen parameters and buffers as they are. Collective: every rank calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = dict(engine.module.named_parameters())
    out = {}
    for name, value in engine.module.state_dict().items():
        p = params.get(name)
        full = safe_get_full_fp32_param(p) if p is not None and p.requires_grad else None
        value = full if full is not None else value
        out[name] = (value.float() if value.is_floating_point() else value).detach().cpu().clone()
    return out


def export_phase_weights(engine, path: Path, info: DistInfo) -> str:
    """Write the engine's ViCLIP as an official ``{'model': state_dict}`` file (fp32 master weights) on
    rank 0. Collective: every rank calls it. (``viclip.model.export_weights`` writes a pretrained folder
    of a model in memory; this is a training run's phase-end file.)"""
    sd = fp32_state_dict(engine)
    if info.is_main:
        model = ViCLIP(engine.module.cfg)
        shapes = model.state_dict()
        model.load_state_dict({k: v.reshape(shapes[k].shape) for k, v in sd.items()})
        model.clamp_temp()
        export_official(model, path)
    return str(path)


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), which holds the Adam moments."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer inside {type(optimizer).__name__}")
    return optimizer


def reset_optimizer_state(optimizer) -> None:
    """Forget the Adam moments and step counts: the next step is a fresh AdamW's first (bias correction
    included), over the same parameters and groups; the official unmasked phase starts this way, as a
    new job from the masked phase's weights."""
    base_optimizer(optimizer).state.clear()
