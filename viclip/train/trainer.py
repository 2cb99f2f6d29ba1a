"""The DeepSpeed training loop: two phases (masked, then unmasked) in one invocation, with resume.

One linear story: check the config, join the process group, build model, data stream, optimizer and
DeepSpeed engine, restore the newest checkpoint if asked, then run each phase with its own
warmup + cosine schedule, saving checkpoints every N steps and at each phase end, where the weights
are also exported in the official format. A checkpoint is the sum of explicit states (engine,
train state, each rank's data position and RNGs), so a killed run resumes bit-exactly on the CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from viclip.model import ViCLIP, create_model, export_official, init_from_clip
from viclip.train import data as train_data
from viclip.train.checkpoint import Checkpointer, rng_state, set_rng_state
from viclip.train.config import Phase, check_config, phases_of
from viclip.train.distributed import DistInfo, init_distributed, set_cpu_threads, shutdown
from viclip.train.logger import MetricsLogger
from viclip.train.loss import ClipLoss
from viclip.train.meters import ThroughputMeter, peak_flops, train_flops_per_clip
from viclip.train.optim import WarmupCosine, build_optimizer, set_lr


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses."""


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint."""

    phase: int = 0  # index into the active phases
    step: int = 0  # optimizer steps done in the current phase
    global_step: int = 0
    bad_in_row: int = 0
    nonfinite_steps: int = 0
    exports: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    exports: dict[str, str]  # phase name -> exported official-format weights
    final_loss: float | None
    is_main: bool


def save_resolved_config(cfg: DictConfig, run_dir: Path, info: DistInfo) -> None:
    """Write ``config.yaml`` once, after checking that every rank resolved the same config."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = [None] * info.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError("the resolved config differs between ranks (environment variables differ between "
                           "nodes?); every rank must train the same config")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(text)
        tmp.replace(run_dir / "config.yaml")


def build_model(cfg: DictConfig, is_main: bool) -> ViCLIP:
    model = create_model(cfg.model.name, **OmegaConf.to_container(cfg.model.overrides))
    if cfg.model.clip_weights:
        report = init_from_clip(model, cfg.model.clip_weights)
        if is_main:
            print(report, flush=True)
    return model


def vectorise_scalars(model: torch.nn.Module) -> None:
    """Give 0-dim parameters (``temp``) shape [1]: DeepSpeed 0.19's initial broadcast views every
    parameter as bytes, which fails on 0-dim tensors. The export restores the official shape []."""
    for p in model.parameters():
        if p.ndim == 0:
            p.data = p.data.reshape(1)


def deepspeed_config(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """The deepspeed group as-is, plus batch sizes and clipping from train.*."""
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    ds.update(
        train_micro_batch_size_per_gpu=int(cfg.train.batch_size),
        gradient_accumulation_steps=int(cfg.train.grad_accum),
        train_batch_size=int(cfg.train.batch_size) * int(cfg.train.grad_accum) * world_size,
        gradient_clipping=float(cfg.train.grad_clip),
        steps_per_print=2**31 - 1,  # our own logger prints
    )
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


def export_phase(engine, phase: Phase, run_dir: Path, info: DistInfo) -> str:
    """Export the official ``{'model': state_dict}`` file of this phase's end (fp32 master weights)."""
    sd = fp32_state_dict(engine)
    path = run_dir / "weights" / f"{phase.name}.pth"
    if info.is_main:
        model = ViCLIP(engine.module.cfg)
        shapes = model.state_dict()
        model.load_state_dict({k: v.reshape(shapes[k].shape) for k, v in sd.items()})
        model.clamp_temp()
        export_official(model, path)
        print(f"[{phase.name}] exported official-format weights to {path}", flush=True)
    return str(path)


def _reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train(cfg: DictConfig) -> TrainResult:
    """Run every phase of ``cfg`` (a composed ``configs/train.yaml``); see the module docstring."""
    check_config(cfg)
    info = init_distributed()
    try:
        result = _train(cfg, info)
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()
    return result


def _train(cfg: DictConfig, info: DistInfo) -> TrainResult:
    import deepspeed

    run_dir = Path(cfg.output_dir)
    phases = phases_of(cfg)
    if info.device.type == "cpu":
        set_cpu_threads(int(cfg.data.num_workers))
    save_resolved_config(cfg, run_dir, info)
    train_data.prepare(cfg.data, info.is_main)
    dist.barrier()

    torch.manual_seed(int(cfg.seed))  # the same initial weights on every rank
    model = build_model(cfg, info.is_main)
    torch.manual_seed(int(cfg.seed) + 1 + info.rank)  # then distinct masking and drop-path draws per rank
    stream = train_data.build_stream(cfg, model.cfg, info.rank, info.world_size)
    grad_accum = int(cfg.train.grad_accum)
    steps_per_epoch = int(cfg.train.steps_per_epoch or 0) or max(1, len(stream) // grad_accum)

    vectorise_scalars(model)
    optimizer = build_optimizer(model, lr=phases[0].lr, weight_decay=cfg.optim.weight_decay,
                                betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   config=deepspeed_config(cfg, info.world_size))
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    loss_fn = ClipLoss(local_loss=bool(cfg.loss.local), same_video=cfg.loss.same_video, rank=info.rank,
                       world_size=info.world_size)

    ckpt = Checkpointer(run_dir / "checkpoints", keep=int(cfg.train.keep_checkpoints), rank=info.rank,
                        world_size=info.world_size)
    ckpt.clean_incomplete()
    state = TrainState()
    resume_dir = ckpt.resolve(cfg.resume)
    if resume_dir is None and cfg.resume is None and ckpt.resolve("auto") is not None:
        raise RuntimeError(f"{run_dir} already holds checkpoints: pass resume=auto to continue the run, or "
                           "choose another run_name/output_dir")
    if resume_dir is not None:
        train_state, rank_state = ckpt.load(engine, resume_dir)
        state = TrainState(**train_state)
        stream.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
        if info.is_main:
            print(f"resumed from {resume_dir}: phase {state.phase} step {state.step} "
                  f"(global {state.global_step})", flush=True)

    logger = MetricsLogger(run_dir, cfg.logger, cfg.run_name, OmegaConf.to_container(cfg, resolve=True),
                           OmegaConf.to_container(cfg.wandb), enabled=info.is_main,
                           start_step=state.global_step)
    peak = peak_flops(info.device)
    batches = train_data.endless(stream)
    last_loss = None

    def save() -> None:
        ckpt.save(engine, state.global_step, dataclasses.asdict(state),
                  {"data": stream.state_dict(), "rng": rng_state()})

    for phase_idx, phase in enumerate(phases):
        if phase_idx < state.phase:
            continue
        total = max(1, round(phase.epochs * steps_per_epoch))
        schedule = WarmupCosine(phase.lr, total, min(total, round(phase.warmup_epochs * steps_per_epoch)),
                                phase.min_lr_ratio)
        flops = train_flops_per_clip(engine.module.cfg, phase.mask_ratio)
        meter = ThroughputMeter()
        window: list[float] = []
        if info.is_main:
            print(f"[{phase.name}] {total} steps ({phase.epochs:g} epochs of {steps_per_epoch}), mask_ratio "
                  f"{phase.mask_ratio}, lr {phase.lr:g}, warmup {schedule.warmup_steps} steps, "
                  f"{info.world_size} rank(s) x {cfg.train.batch_size} clips x {grad_accum} accumulation",
                  flush=True)
        while state.step < total:
            set_lr(optimizer, schedule(state.step))
            for _ in range(grad_accum):
                loss_value = _micro_step(engine, loss_fn, batches, stream.normalize, phase, dtype, info, meter,
                                         state, cfg)
                if loss_value is not None:
                    window.append(loss_value)
            state.step += 1
            state.global_step += 1
            engine.module.clamp_temp()  # official: temp >= 0.01 (the loss floors it too)
            last_loss = sum(window) / len(window) if window else float("nan")
            if state.step % int(cfg.train.log_every) == 0 or state.step == total:
                logger.log(_record(phase, state, total, last_loss, schedule, engine, meter, stream, flops,
                                   peak, info))
                window.clear()
            if state.step % int(cfg.train.ckpt_every) == 0 and state.step < total:
                save()
        # Export first: a kill between the two redoes the phase's end from the last checkpoint and
        # writes the same file again; the other order could leave a finished phase unexported.
        state.exports[phase.name] = export_phase(engine, phase, run_dir, info)
        state.phase, state.step = phase_idx + 1, 0
        save()  # at every phase end, with the state pointing at the next phase
    logger.close()
    return TrainResult(run_dir, dict(state.exports), last_loss, info.is_main)


def _micro_step(engine, loss_fn: ClipLoss, batches, normalize: Callable[..., torch.Tensor], phase: Phase,
                dtype: torch.dtype, info: DistInfo, meter: ThroughputMeter, state: TrainState,
                cfg: DictConfig) -> float | None:
    """One micro-batch; a non-finite loss (on any rank) skips it on every rank and is counted.

    Skipping both backward and engine.step keeps DeepSpeed's accumulation counter in step with the
    other ranks; the next micro-batch takes the skipped one's place.
    """
    while True:
        meter.start()
        # Starting an epoch's DataLoader draws its worker seed from the global RNG; keep that draw out
        # of the training RNG (masking, drop-path), which a resumed run must replay exactly.
        with torch.random.fork_rng(devices=[]):
            batch = next(batches)
        meter.data_ready()
        video = normalize(batch["video"].to(info.device, non_blocking=True), dtype)
        tokens = batch["text"].to(info.device, non_blocking=True)
        video_features, text_features = engine(video, tokens, mask_ratio=phase.mask_ratio)
        index, video_id = train_data.positive_keys(batch, cfg.loss, info.device)
        loss = loss_fn(video_features, text_features, engine.module.temp, index, video_id)
        finite = bool(torch.isfinite(loss))
        loss_sum, bad = _reduce([loss.item() if finite else 0.0, 0.0 if finite else 1.0], info.device)
        if bad:
            state.bad_in_row += 1
            state.nonfinite_steps += 1
            meter.end(len(video))
            if state.bad_in_row >= int(cfg.train.max_bad_steps):
                raise NonFiniteLossError(
                    f"{state.bad_in_row} non-finite losses in a row at {phase.name} step {state.step} (global "
                    f"{state.global_step}); lower the lr, enable train.grad_clip or check the data")
            continue
        state.bad_in_row = 0
        engine.backward(loss)
        engine.step()
        meter.end(len(video))
        return loss_sum / info.world_size


def _record(phase: Phase, state: TrainState, total: int, loss: float, schedule: WarmupCosine, engine,
            meter: ThroughputMeter, stream, flops: float, peak: float | None, info: DistInfo) -> dict:
    per_rank = meter.clips_per_s()
    mfu = meter.mfu(flops, peak)
    return {
        "phase": phase.name, "step": state.step, "steps": total, "global_step": state.global_step,
        "loss": loss if math.isfinite(loss) else None, "lr": schedule(state.step - 1), "temp": engine.module.temp.detach().float().item(),
        "mask_ratio": phase.mask_ratio, "clips_per_s": per_rank * info.world_size,
        "clips_per_s_per_rank": per_rank, "data_wait": meter.data_wait_share(),
        "skipped_samples": train_data.skipped_samples(stream), "nonfinite_steps": state.nonfinite_steps,
        "mfu": mfu, "time": time.time(),
    }
