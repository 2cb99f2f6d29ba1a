"""The fine-tuning Trainer: pre-training's engine (DeepSpeed, resume=auto, checkpoints, metrics.jsonl and
wandb) run over epochs of an annotation list, evaluated after every epoch, best weights kept.

:class:`FinetuneTrainer` starts from ``checkpoint=`` (an official ViCLIP ``.pth``, read by
:mod:`viclip.model.weights`: the temporal embedding is resampled to ``model.overrides.num_frames``, the
text position table grown to ``context_length`` by :func:`viclip.model.text.extend_positional_embedding`),
and trains the config's one ``finetune`` phase (warmup + cosine, as a pre-training phase). After each
epoch it exports the weights in the official format to ``last.pth``, evaluates them with the eval
runner (:func:`viclip.eval.runner.evaluate`, task ``finetune.eval.task``, results under
``eval/epoch_NNN/``), logs ``val/<metric>`` records, and copies them to ``weights/best.pth`` when
``finetune.best_metric`` improves; that file is the phase's export, so ``eval.py checkpoint=<run dir>``
evaluates the best epoch. The best-so-far and the history are part of the checkpoint, so a resumed run
keeps them. Subclasses say what the samples are (:meth:`FinetuneTrainer.train_samples`) and what the
model and loss are (viclip.finetune.retrieval; viclip.finetune.recognition).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from viclip.atomic import atomic_path
from viclip.distributed import barrier
from viclip.errors import ConfigError
from viclip.finetune.data import FinetuneLoader, LoaderConfig, Sample
from viclip.model import ViCLIP, ViCLIPConfig, load_checkpoint_file
from viclip.model.text import POSITION_INITS, extend_positional_embedding
from viclip.model.viclip import with_overrides
from viclip.model.weights import load_weights, read_config
from viclip.train.config import Phase, check_run_fields, missing_fields, phases_of
from viclip.train.engine import export_phase_weights
from viclip.train.loader import loader_workers, train_transform
from viclip.train.trainer import Trainer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_TEXT_POSITIONS = "text_encoder.positional_embedding"
BEST_MODES = ("max", "min")


def eval_config(overrides: list[str]) -> DictConfig:
    """eval.py's config with ``overrides``, composed inside a running Hydra app or on its own."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="eval", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


class FinetuneTrainer(Trainer):
    """Fine-tuning on a Trainer; see the module docstring. Subclasses implement :meth:`train_samples`."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.history: list[dict[str, Any]] = []  # one entry per evaluation: epoch, metrics
        self.best: dict[str, Any] = {"value": None, "epoch": None}

    # -- config ------------------------------------------------------------------------------------
    def required_paths(self) -> dict[str, bool]:
        """Config keys of input paths checked before any work: key -> whether it is a directory."""
        return {"checkpoint": False}

    def check_config(self, cfg: DictConfig) -> None:
        """Every unset field and every absent input path in one error, then the first invalid field."""
        problems = missing_fields(cfg)
        unset = {p.split(" ", 1)[0] for p in problems}
        for key, is_dir in self.required_paths().items():
            value = OmegaConf.select(cfg, key)
            if key in unset or value is None:
                if key not in unset:
                    problems.append(f"{key} (set {key}=...)")
                continue
            path = Path(str(value)).expanduser()
            if not (path.is_dir() if is_dir else path.is_file()):
                problems.append(f"{key}={path} does not exist (expected a {'directory' if is_dir else 'file'})")
        if problems:
            raise ConfigError("required config field(s) not set or not found: " + "; ".join(problems))
        known = {f.name for f in dataclasses.fields(ViCLIPConfig)}
        unknown = sorted(set(cfg.model.overrides) - known)
        if unknown:
            raise ConfigError(f"model.overrides: unknown ViCLIPConfig field(s) {unknown}; known: {sorted(known)}")
        ft = cfg.finetune
        if ft.text_positions.init not in POSITION_INITS:
            raise ConfigError(f"finetune.text_positions.init must be one of {POSITION_INITS}, "
                              f"got {ft.text_positions.init!r}")
        if ft.text_positions.init == "clip" and not ft.text_positions.clip_weights:
            raise ConfigError("finetune.text_positions.init=clip needs finetune.text_positions.clip_weights=PATH "
                              "(CLIP weights, OpenAI or open_clip naming)")
        check_run_fields(cfg)
        if cfg.loss.same_video != "negative":
            raise ConfigError(f"loss.same_video={cfg.loss.same_video} needs each clip's source video, which "
                              "fine-tuning samples lack (a video's captions are already positives of each other); use "
                              "loss.same_video=negative")
        if ft.eval is not None:
            if ft.best_mode not in BEST_MODES:
                raise ConfigError(f"finetune.best_mode must be one of {BEST_MODES}, got {ft.best_mode!r}")
            for phase in phases_of(cfg):
                if phase.epochs != int(phase.epochs):
                    raise ConfigError(f"phases.{phase.name}.epochs must be a whole number when finetune.eval "
                                      f"evaluates every epoch, got {phase.epochs}")

    # -- model and data ----------------------------------------------------------------------------
    def pretrained(self) -> ViCLIP:
        """``checkpoint`` at the config's sizes (``model.overrides``: frames, drop path, text length, ...)."""
        cfg, path = self.cfg, str(self.cfg.checkpoint)
        self.model_cfg = with_overrides(read_config(path), **OmegaConf.to_container(cfg.model.overrides))
        sd = load_checkpoint_file(path)
        rows, length = sd[_TEXT_POSITIONS].shape[0], self.model_cfg.context_length
        if length < rows:
            raise ConfigError(f"model.overrides.context_length={length} is shorter than the checkpoint's {rows} "
                              "text positions; fine-tune at >= that length")
        if length > rows:
            positions = cfg.finetune.text_positions
            clip = None
            if positions.init == "clip":
                clip = load_checkpoint_file(positions.clip_weights).get("positional_embedding")
                if clip is None:
                    raise ConfigError(f"finetune.text_positions.clip_weights={positions.clip_weights}: no text "
                                      "'positional_embedding' (expected CLIP weights, OpenAI or open_clip naming)")
            sd[_TEXT_POSITIONS] = extend_positional_embedding(sd[_TEXT_POSITIONS], length, positions.init, clip)
        model = ViCLIP(self.model_cfg)
        load_weights(model, sd)
        if self.info.is_main:
            print(f"fine-tuning {path}: {self.model_cfg.num_frames} frames, text length {length} "
                  f"(checkpoint {rows}{', new rows: ' + cfg.finetune.text_positions.init if length > rows else ''}), "
                  f"drop path {self.model_cfg.drop_path_rate}, text tower "
                  f"{'frozen' if self.model_cfg.freeze_text else 'trained'}", flush=True)
        return model

    def train_samples(self) -> list[Sample]:
        """The training split as samples (a subclass reads its annotation format)."""
        raise NotImplementedError(f"{type(self).__name__} must say what its training samples are")

    def tokenizer(self, model: torch.nn.Module) -> Callable[[list[str]], torch.Tensor] | None:
        """Tokenises each batch's texts in the loader's workers; None: the samples carry labels only."""
        return None

    def build_loader(self, model: torch.nn.Module) -> FinetuneLoader:
        cfg, info = self.cfg, self.info
        transform = train_transform(cfg.data.augment, self.model_cfg.image_size)
        augment, repeats = self.loader_augment()
        config = LoaderConfig(self.batch_size, self.model_cfg.num_frames, seed=int(cfg.seed),
                              num_workers=loader_workers(cfg.data, torch.cuda.is_available()),
                              backend=cfg.data.backend, repeats=repeats,
                              max_seconds=cfg.finetune.train.get("max_seconds"))
        return FinetuneLoader(self.train_samples(), config, transform, self.tokenizer(model), info.rank,
                              info.world_size, pin_memory=torch.cuda.is_available(), augment=augment)

    def loader_augment(self) -> tuple[Callable[[torch.Tensor, int], torch.Tensor] | None, int]:
        """A change of the decoded frames before the crop, and the clips per video (repeated augmentation):
        none and 1 here; recognition's are UMT's (viclip.finetune.augment)."""
        return None, 1

    # -- evaluation --------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        if self.cfg.finetune.eval is not None:
            from viclip.eval.tasks import load_task

            # the validation split's paths fail here, not after the first epoch (a synthetic set is generated)
            ecfg = eval_config(self.eval_overrides(Path(str(self.cfg.checkpoint)), self.run_dir / "eval"))
            load_task(OmegaConf.to_container(ecfg.task, resolve=True), cache_dir=ecfg.cache_dir)

    def eval_overrides(self, weights: Path, out: Path) -> list[str]:
        """eval.py overrides for one evaluation of ``weights`` on the validation split."""
        ev = self.cfg.finetune.eval
        return [f"task={ev.task}", f"checkpoint={weights}", f"output_dir={out}", f"data_root={self.cfg.data_root}",
                "embedding_cache=false", *ev.overrides]

    def write_weights(self, path: Path) -> str:
        """The model now, in the official format, at ``path`` (rank 0 writes; collective). A subclass
        whose model is not a ViCLIP writes its own."""
        return export_phase_weights(self.engine, path, self.info)

    def evaluate(self, weights: Path, out: Path) -> dict[str, float]:
        """The validation metrics of ``weights`` from the eval runner (every rank takes part)."""
        from viclip.eval.runner import evaluate

        with torch.random.fork_rng(devices=[]):  # the evaluation's loader draws stay out of training's RNG
            return evaluate(eval_config(self.eval_overrides(weights, out)))["metrics"]

    def evaluate_now(self, phase: Phase, epoch: int) -> None:
        """Export this epoch's weights, evaluate them, log ``val/*``, keep them if they are the best."""
        ft, info = self.cfg.finetune, self.info
        last = Path(self.write_weights(self.run_dir / "last.pth"))
        barrier()  # rank 0 wrote the file every rank's evaluation reads
        metrics = self.evaluate(last, self.run_dir / "eval" / f"epoch_{epoch:03d}")
        if ft.best_metric not in metrics:
            raise ConfigError(f"finetune.best_metric={ft.best_metric!r} is not among the task's metrics "
                              f"{sorted(metrics)}")
        value = float(metrics[ft.best_metric])
        best = self.best["value"]
        if best is None or (value > best if ft.best_mode == "max" else value < best):
            self.best = {"value": value, "epoch": epoch}
            if info.is_main:
                with atomic_path(self.run_dir / "weights" / "best.pth") as tmp:
                    shutil.copyfile(last, tmp)
        barrier()
        self.history.append({"epoch": epoch, "metrics": {k: float(v) for k, v in metrics.items()}})
        self.logger.log({"phase": phase.name, "epoch": epoch, "global_step": self.state.global_step,
                         **{f"val/{k}": float(v) for k, v in metrics.items()}, "best_metric": ft.best_metric,
                         "best": self.best["value"], "best_epoch": self.best["epoch"], "time": time.time()},
                        console=False)
        if info.is_main:
            print(f"[{phase.name}] epoch {epoch}: val {ft.best_metric} {value:.2f} "
                  f"(best {self.best['value']:.2f} at epoch {self.best['epoch']})", flush=True)

    def fit(self):
        """Evaluate the starting weights first when ``finetune.eval.at_start`` (a fresh run only); end with
        the best metric's history."""
        ev = self.cfg.finetune.eval
        if ev is not None and ev.at_start and self.state.global_step == 0 and not self.history:
            self.evaluate_now(self.phases[0], 0)
        result = super().fit()
        if self.history and self.info.is_main:
            name = self.cfg.finetune.best_metric
            values = [h["metrics"][name] for h in self.history]
            steps = ", ".join(f"epoch {h['epoch']} {v:.2f}" for h, v in zip(self.history, values))
            start = f"start {values[0]:.2f}, " if self.history[0]["epoch"] == 0 else ""
            print(f"val {name}: {steps}\nval {name}: {start}last {values[-1]:.2f}, best {self.best['value']:.2f} at "
                  f"epoch {self.best['epoch']} (kept; selected on this validation set, so the best is optimistic)",
                  flush=True)
        return result

    def end_epoch(self, phase: Phase, total: int) -> None:
        if self.cfg.finetune.eval is None:
            return
        self.evaluate_now(phase, self.state.step // self.steps_per_epoch)
        if self.state.step < total:  # the phase end saves the last one
            self.save_checkpoint()

    def export(self, phase: Phase) -> str:
        """The best epoch's weights (``weights/best.pth``); without per-epoch evaluation, the last ones."""
        if self.cfg.finetune.eval is None:
            return super().export(phase)
        path = self.run_dir / "weights" / "best.pth"
        if self.info.is_main:
            print(f"[{phase.name}] best {self.cfg.finetune.best_metric} {self.best['value']:.2f} at epoch "
                  f"{self.best['epoch']}: {path}", flush=True)
        return str(path)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "finetune": {"history": self.history, "best": self.best}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = list(state["finetune"]["history"])
        self.best = dict(state["finetune"]["best"])
