"""The :class:`Trainer`: it owns a run's DeepSpeed engine, loader, loss, meters, logger and checkpointer.

One linear story, in torchtitan's manner: :meth:`Trainer.setup` checks the config, joins the process
group, builds model, loader, optimizer and DeepSpeed engine and restores the newest checkpoint if asked
(:meth:`Trainer.resume`, the one place resume happens); :meth:`Trainer.fit` runs each phase
(:meth:`Trainer.run_phase`) with its own warmup + cosine schedule, one :meth:`Trainer.train_step` per
optimizer step, saving checkpoints every N steps and at each phase end, where the weights are also
exported in the official format. A checkpoint is the sum of explicit states (engine, and
:meth:`Trainer.state_dict`: train state, this rank's data position and RNGs), so a killed run resumes
bit-exactly on the CPU.

Fine-tuning (:mod:`viclip.finetune`) and the benchmark subclass it through hooks that ``setup`` and
the loop call: :meth:`Trainer.check_config`, :meth:`Trainer.build_model`, :meth:`Trainer.build_loader`
(a loader with ``len``, ``state_dict``/``load_state_dict``, ``normalize(video, dtype)`` and
``skip_counts()`` that yields batch dicts and moves to the next epoch by itself),
:meth:`Trainer.param_groups`, :meth:`Trainer.build_loss`, :meth:`Trainer.forward_loss`,
:meth:`Trainer.after_step`, :meth:`Trainer.end_epoch`, :meth:`Trainer.flops_per_clip` and
:meth:`Trainer.export`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from viclip.distributed import init_distributed, set_cpu_threads, shutdown
from viclip.errors import OutputError
from viclip.model import CheckpointError, ViCLIP, create_model, init_from_clip
from viclip.train import loader as train_loader
from viclip.train.checkpoint import Checkpointer, rng_state, set_rng_state
from viclip.train.config import Phase, phase_steps, phases_of, steps_per_epoch, validate_train_config
from viclip.train.engine import deepspeed_config, export_phase_weights, reset_optimizer_state, vectorise_scalars
from viclip.train.kernels import prepare_kernels
from viclip.train.logger import MetricsLogger
from viclip.train.loss import ClipLoss
from viclip.train.meters import StepClock, ThroughputMeter, peak_flops, time_left, train_flops_per_clip
from viclip.train.optim import WarmupCosine, build_optimizer, param_groups, set_lr
from viclip.train.rundir import RunDirLock, claim_run_dir, save_resolved_config


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


def build_train_model(cfg: DictConfig, is_main: bool) -> ViCLIP:
    """The config's model, initialised from CLIP weights when ``model.clip_weights`` names them."""
    model = create_model(cfg.model.name, **OmegaConf.to_container(cfg.model.overrides))
    if cfg.model.clip_weights:
        try:  # a file or an open_clip tag (openai, ...)
            report = init_from_clip(model, cfg.model.clip_weights)
        except CheckpointError as e:
            raise CheckpointError(f"model.clip_weights={cfg.model.clip_weights}: {e}") from e
        if is_main:
            print(report, flush=True)
    return model


def _reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Owns one training run; see the module docstring. Attributes are set by :meth:`setup`."""

    def __init__(self, cfg: DictConfig) -> None:
        self.check_config(cfg)  # before any work: no run directory, no process group
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.phases = phases_of(cfg)
        self.grad_accum = int(cfg.train.grad_accum)
        self.batch_size = self.phases[0].batch_size  # of the loader now built: the current phase's
        self.state = TrainState()
        self.last_loss: float | None = None
        self.lock: RunDirLock | None = None

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Join the process group and build every part; restore the run if ``resume`` asks for it."""
        import deepspeed

        cfg = self.cfg
        self.info = info = init_distributed()
        if info.device.type == "cpu":
            set_cpu_threads(train_loader.loader_workers(cfg.data, cuda=False))
        self.lock = claim_run_dir(self.run_dir, info)
        save_resolved_config(cfg, self.run_dir, info)
        train_loader.prepare(cfg.data, info.is_main)
        dist.barrier()

        torch.manual_seed(int(cfg.seed))  # the same initial weights on every rank
        model = self.build_model()
        torch.manual_seed(int(cfg.seed) + 1 + info.rank)  # then distinct masking and drop-path draws per rank
        self.set_loader(self.build_loader(model))

        vectorise_scalars(model)
        optimizer = build_optimizer(self.param_groups(model), lr=self.phases[0].lr, betas=tuple(cfg.optim.betas),
                                    eps=cfg.optim.eps)
        ds_config = deepspeed_config(cfg, info.world_size, info.device)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        report = prepare_kernels(self.engine.module, bool(cfg.train.compile), [p.mask_ratio for p in self.phases],
                                 self.dtype, info.device)
        if info.is_main:
            print(report, flush=True)
        self.loss_fn = self.build_loss()
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=int(cfg.train.keep_checkpoints),
                                         rank=info.rank, world_size=info.world_size)
        self.resume()
        self.logger = MetricsLogger(self.run_dir, cfg.logger, cfg.run_name, OmegaConf.to_container(cfg, resolve=True),
                                    OmegaConf.to_container(cfg.wandb), enabled=info.is_main,
                                    start_step=self.state.global_step, console=bool(cfg.progress))
        self.peak = peak_flops(info.device)
        self.clock = StepClock()

    def release(self) -> None:
        """Let another run use the directory (the lock also ends with the process)."""
        if self.lock is not None:
            self.lock.release()

    def check_config(self, cfg: DictConfig) -> None:
        """Raise ConfigError naming every unset path and the first invalid field; does no work."""
        validate_train_config(cfg)

    def build_model(self) -> torch.nn.Module:
        """The model to train (the same initial weights on every rank: the seed is set before)."""
        return build_train_model(self.cfg, self.info.is_main)

    def build_loader(self, model: torch.nn.Module):
        """This rank's training loader at ``self.batch_size`` clips (see the module docstring for what it
        must offer)."""
        return train_loader.build_loader(self.cfg, model.cfg, self.batch_size, self.info.rank, self.info.world_size)

    def set_loader(self, loader) -> None:
        """Train from ``loader`` (at ``self.batch_size``); the epoch length follows from it."""
        self.loader = loader
        self.batches = train_loader.endless(loader)
        self.steps_per_epoch = steps_per_epoch(self.cfg, len(loader))

    def enter_phase(self, index: int) -> None:
        """Give the loader the batch size of phase ``index`` (a new loader, from the next epoch of the data,
        when it changes); a no-op past the last phase or at the same batch size."""
        if index >= len(self.phases) or self.phases[index].batch_size == self.batch_size:
            return
        old = self.loader.state_dict()
        self.batch_size = self.phases[index].batch_size
        loader = self.build_loader(self.engine.module)
        loader.load_state_dict({**loader.state_dict(), "epoch": old["epoch"] + (1 if old["step"] else 0)})
        self.set_loader(loader)

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """The optimizer's parameter groups; a group's ``lr_scale`` multiplies the scheduled lr."""
        return param_groups(model, float(self.cfg.optim.weight_decay))

    def build_loss(self) -> ClipLoss:
        cfg, info = self.cfg, self.info
        return ClipLoss(local_loss=bool(cfg.loss.local), same_video=cfg.loss.same_video, rank=info.rank,
                        world_size=info.world_size, temp_min=self.engine.module.cfg.temp_min)

    # -- resume ------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Clean a killed save's leftovers, then restore the checkpoint ``cfg.resume`` designates, if any.

        A run directory that already holds checkpoints is refused without ``resume``: a second run
        would silently mix with the first.
        """
        ckpt = self.checkpointer
        ckpt.clean_incomplete()
        resume_dir = ckpt.resolve(self.cfg.resume)
        if resume_dir is None and self.cfg.resume is None and ckpt.resolve("auto") is not None:
            raise OutputError(f"output_dir={self.run_dir} already holds checkpoints: pass resume=auto to continue "
                              "the run, or choose another run_name/output_dir")
        if resume_dir is None:
            return
        train_state, rank_state = ckpt.load(self.engine, resume_dir)
        self.load_state_dict({"train": train_state, **rank_state})
        if self.info.is_main:
            print(f"resumed from {resume_dir}: phase {self.state.phase} step {self.state.step} "
                  f"(global {self.state.global_step})", flush=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the engine: the train state, this rank's data position and its RNGs."""
        return {"train": dataclasses.asdict(self.state), "data": self.loader.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainState(**state["train"])
        self.enter_phase(self.state.phase)  # the saved data position is of that phase's loader
        self.loader.load_state_dict(state["data"])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        """Collective: the engine, plus :meth:`state_dict` (train state shared, the rest per rank)."""
        state = self.state_dict()
        self.checkpointer.save(self.engine, self.state.global_step, state.pop("train"), state)

    # -- training ----------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the phases not yet done (all of them, on a fresh run)."""
        for phase_idx, phase in enumerate(self.phases):
            if phase_idx >= self.state.phase:
                self.run_phase(phase)
        self.logger.close()
        return TrainResult(self.run_dir, dict(self.state.exports), self.last_loss)

    def run_phase(self, phase: Phase) -> None:
        """The phase's remaining steps, periodic checkpoints, then export and a checkpoint at its end."""
        cfg, info, state = self.cfg, self.info, self.state
        index = self.phases.index(phase)
        if index > 0 and state.step == 0 and cfg.train.phase_optimizer == "fresh":
            reset_optimizer_state(self.optimizer)  # also on a resume at this phase's start: the same state
        total = self.phase_steps(phase)
        schedule = WarmupCosine(phase.lr, total, min(total, round(phase.warmup_epochs * self.steps_per_epoch)),
                                phase.min_lr_ratio, phase.min_lr, phase.warmup_lr)
        self.flops = self.flops_per_clip(phase)
        self.meter = ThroughputMeter()
        self.clock.new_phase()
        if info.is_main:
            print(f"[{phase.name}] {total} steps ({phase.epochs:g} epochs of {self.steps_per_epoch}), mask_ratio "
                  f"{phase.mask_ratio}, lr {phase.lr:g}, warmup {schedule.warmup_steps} steps, "
                  f"{info.world_size} rank(s) x {self.batch_size} clips x {self.grad_accum} accumulation, "
                  f"{'a fresh' if index > 0 and cfg.train.phase_optimizer == 'fresh' else 'the'} AdamW state",
                  flush=True)
        window: list[float] = []
        while state.step < total:
            lr = schedule(state.step)
            window.extend(self.train_step(phase, lr))
            self.clock.tick()
            self.last_loss = sum(window) / len(window) if window else float("nan")
            if state.step % int(cfg.train.log_every) == 0 or state.step == total:
                self.logger.log(self.record(phase, total, lr))
                window.clear()
            if state.step % self.steps_per_epoch == 0:
                self.end_epoch(phase, total)  # before the periodic save, so that it holds what end_epoch did
            if state.step % int(cfg.train.ckpt_every) == 0 and state.step < total:
                self.save_checkpoint()
        # Export first: a kill between the two redoes the phase's end from the last checkpoint and
        # writes the same file again; the other order could leave a finished phase unexported.
        state.exports[phase.name] = self.export(phase)
        state.phase, state.step = index + 1, 0
        self.enter_phase(state.phase)  # the checkpoint holds the next phase's data position
        self.save_checkpoint()  # at every phase end, with the state pointing at the next phase

    def phase_steps(self, phase: Phase) -> int:
        """Optimizer steps of a whole phase (:func:`viclip.train.config.phase_steps`). A later phase at another
        batch size is priced from this loader's epoch (for the ETA; exact once it runs)."""
        per_epoch = self.steps_per_epoch
        if phase.batch_size != self.batch_size:
            per_epoch = steps_per_epoch(self.cfg, len(self.loader) * self.batch_size // phase.batch_size)
        return phase_steps(phase, per_epoch)

    def flops_per_clip(self, phase: Phase) -> float:
        """Training FLOPs per clip at the phase's masking, for the MFU of the log."""
        return train_flops_per_clip(self.engine.module.cfg, phase.mask_ratio)

    def end_epoch(self, phase: Phase, total: int) -> None:
        """Called after each epoch's last step (``state.step`` is a multiple of ``steps_per_epoch``);
        pre-training does nothing there, fine-tuning evaluates and keeps the best weights."""

    def export(self, phase: Phase) -> str:
        """Write the phase's official-format weights at its end; returns their path. Collective."""
        path = export_phase_weights(self.engine, self.run_dir / "weights" / f"{phase.name}.pth", self.info)
        if self.info.is_main:
            print(f"[{phase.name}] exported official-format weights to {path}", flush=True)
        return path

    def train_step(self, phase: Phase, lr: float) -> list[float]:
        """One optimizer step at ``lr`` (``grad_accum`` micro-batches); returns their mean losses."""
        set_lr(self.optimizer, lr)
        losses = [self.micro_step(phase) for _ in range(self.grad_accum)]
        self.state.step += 1
        self.state.global_step += 1
        self.after_step()
        return losses

    def after_step(self) -> None:
        """After each optimizer step: ViCLIP's temp >= temp_min (official; the loss floors it too)."""
        self.engine.module.clamp_temp()

    def next_batch(self) -> dict:
        # Starting an epoch's DataLoader draws its worker seed from the global RNG; keep that draw out
        # of the training RNG (masking, drop-path), which a resumed run must replay exactly.
        with torch.random.fork_rng(devices=[]):
            return next(self.batches)

    def forward_loss(self, batch: dict, phase: Phase) -> torch.Tensor:
        """The loss of one batch (on the device, in the engine's dtype) at the phase's masking."""
        device = self.info.device
        video = self.loader.normalize(batch["video"].to(device, non_blocking=True), self.dtype)
        tokens = batch["text"].to(device, non_blocking=True)
        video_features, text_features = self.engine(video, tokens, mask_ratio=phase.mask_ratio)
        index, video_id = train_loader.positive_keys(batch, self.cfg.loss, device)
        return self.loss_fn(video_features, text_features, self.engine.module.temp, index, video_id)

    def micro_step(self, phase: Phase) -> float:
        """One micro-batch; a non-finite loss (on any rank) skips it on every rank and is counted.

        Skipping both backward and engine.step keeps DeepSpeed's accumulation counter in step with the
        other ranks; the next micro-batch takes the skipped one's place.
        """
        state = self.state
        while True:
            self.meter.start()
            batch = self.next_batch()
            self.meter.data_ready()
            loss = self.forward_loss(batch, phase)
            finite = bool(torch.isfinite(loss))
            loss_sum, bad = _reduce([loss.item() if finite else 0.0, 0.0 if finite else 1.0], self.info.device)
            if bad:
                state.bad_in_row += 1
                state.nonfinite_steps += 1
                self.meter.end(len(batch["video"]))
                if state.bad_in_row >= int(self.cfg.train.max_bad_steps):
                    raise NonFiniteLossError(
                        f"{state.bad_in_row} non-finite losses in a row at {phase.name} step {state.step} (global "
                        f"{state.global_step}); lower the lr, enable train.grad_clip or check the data")
                continue
            state.bad_in_row = 0
            self.engine.backward(loss)
            self.engine.step()
            self.meter.end(len(batch["video"]))
            return loss_sum / self.info.world_size

    def record(self, phase: Phase, total: int, lr: float) -> dict[str, Any]:
        """The metrics record of the step just done."""
        state, loss, per_rank = self.state, self.last_loss, self.meter.clips_per_s()
        temp = getattr(self.engine.module, "temp", None)  # a classifier being fine-tuned has none
        later = self.phases[self.phases.index(phase) + 1:]  # their steps priced in this phase's FLOPs per clip
        later_steps = sum(self.phase_steps(p) * self.flops_per_clip(p) / self.flops
                          for p in later) if self.flops > 0 else 0.0
        eta_phase, eta_run = time_left(self.clock.steps_per_s(), total - state.step, later_steps)
        return {
            "phase": phase.name, "step": state.step, "steps": total, "global_step": state.global_step,
            "loss": loss if math.isfinite(loss) else None, "lr": lr,
            "temp": None if temp is None else temp.detach().float().item(), "mask_ratio": phase.mask_ratio,
            "clips_per_s": per_rank * self.info.world_size, "clips_per_s_per_rank": per_rank,
            "data_wait": self.meter.data_wait_share(), "skipped_samples": train_loader.skipped_samples(self.loader),
            "nonfinite_steps": state.nonfinite_steps, "mfu": self.meter.mfu(self.flops, self.peak), "time": time.time(),
            "steps_per_s": self.clock.steps_per_s(), "elapsed_s": self.clock.elapsed(), "eta_phase_s": eta_phase,
            "eta_run_s": eta_run,
        }


def train(cfg: DictConfig, trainer_cls: type[Trainer] = Trainer,
          then: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Run every phase of ``cfg`` (a composed ``viclip/configs/train.yaml``); see the module docstring.

    ``then`` (the final evaluation) runs on every rank before the process group is torn down, so a
    torchrun launch evaluates on all its ranks instead of rank 0 waiting for peers that have left.
    """
    trainer = trainer_cls(cfg)
    try:
        trainer.setup()
        result = trainer.fit()
        if then is not None:
            then(result)
    except BaseException:
        trainer.release()
        shutdown(clean=False)
        raise
    trainer.release()
    shutdown()
    return result
