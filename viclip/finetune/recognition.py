"""Fine-tuned action recognition (paper Table 3): ``trainer: recognition``.

The recipe of UMT's and VideoMAE's ``run_class_finetuning.py``: the video tower plus a linear head
(:class:`viclip.model.classifier.ViCLIPClassifier`; ``finetune.pool``: UMT's mean of patch tokens or the
class-token embedding), UMT's augmentations (:mod:`viclip.finetune.augment`: RandAugment the same on every
frame, random erasing, repeated augmentation), drop path, AdamW with layer-wise lr decay (timm's
``param_groups_layer_decay`` grouping by the classifier's layer-id function; the Trainer multiplies each
group's ``lr_scale`` into the schedule), mixup / cutmix through timm's ``Mixup`` whose soft targets carry
the label smoothing, scored by ``SoftTargetCrossEntropy`` (``LabelSmoothingCrossEntropy`` with both
off, as UMT). timm's Mixup cuts boxes out of the last two dimensions of ``[B, C, H, W]``, so a clip
goes in as ``[B, T * 3, H, W]``: one box, the same in every frame (:func:`mix_clips`).

UMT's scripts differ by model size (ViT-B: its own lr, epochs, drop path 0.1, layer decay 0.75), so the
recipe fields an experiment leaves null are filled from ``finetune.recipes.<model>``, the model being
the checkpoint's (:func:`apply_size_recipe`); a value given on the command line wins.

The train split is a Kinetics CSV or a JSON list of ``{"video", "caption": class name}`` (the eval
tasks' classification formats, :func:`viclip.data.annotations.load_kinetics`), labels in the order of
``finetune.train.class_names`` (default: the sorted labels, the eval tasks' order). The starting
``checkpoint`` is a ViCLIP (a new head) or a fine-tuned classifier: ``ft_k710_k400`` starts from the
K710 run's weights and keeps the head rows of the target's classes (``finetune.head_map``, a
``label_map.json`` of :mod:`viclip.finetune.k710`).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from viclip.data.annotations import KINETICS_PATTERN, VideoText, load_kinetics
from viclip.finetune.augment import ClipErasing, ClipRandAugment
from viclip.finetune.base import FinetuneTrainer
from viclip.finetune.data import Sample
from viclip.finetune.k710 import k710_name, read_label_map
from viclip.model import export_official
from viclip.model.classifier import POOLS, ViCLIPClassifier, classifier_from_checkpoint
from viclip.model.viclip import forward_flops
from viclip.model.weights import model_name_of, read_config
from viclip.train.config import ConfigError, Phase, _walk
from viclip.train.engine import fp32_state_dict


def mix_clips(mixup: Mixup, video: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on clips ``[B, T, 3, H, W]`` (viewed as ``[B, T * 3, H, W]``: a cutmix box covers the
    same pixels of every frame); returns the mixed clips and the soft targets ``[B, num_classes]``."""
    b, t, c, h, w = video.shape
    mixed, target = mixup(video.reshape(b, t * c, h, w), target)
    return mixed.reshape(b, t, c, h, w), target


def apply_size_recipe(cfg: DictConfig) -> DictConfig:
    """``cfg`` with each null field of ``finetune.recipes`` taken from the recipe of the checkpoint's model
    (``vit_b16``, ``vit_l14``: :func:`viclip.model.weights.model_name_of`); unchanged while the checkpoint
    is unset or absent (the config check names it)."""
    recipes = OmegaConf.to_container(cfg.finetune.get("recipes") or {})
    path = OmegaConf.select(cfg, "checkpoint", throw_on_missing=False)
    if not recipes or not path or not Path(str(path)).is_file():
        return cfg
    fields = {key for recipe in recipes.values() for key, _ in _walk(recipe)}
    unset = sorted(k for k in fields if OmegaConf.select(cfg, k) is None)
    if not unset:
        return cfg
    name = model_name_of(read_config(str(path)))
    recipe = dict(_walk(recipes.get(name) or {}))
    if any(k not in recipe for k in unset):
        raise ConfigError(f"checkpoint={path} is a {name}, and finetune.recipes has no {name} values of "
                          f"{', '.join(k for k in unset if k not in recipe)} (recipes: {sorted(recipes)}); set them")
    cfg = copy.deepcopy(cfg)
    for key in unset:
        OmegaConf.update(cfg, key, recipe[key], merge=False)
    return cfg


class RecognitionTrainer(FinetuneTrainer):
    """A classifier from ``checkpoint=`` trained on ``finetune.train`` and evaluated on ``finetune.eval.task``."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(apply_size_recipe(cfg))

    def required_paths(self) -> dict[str, bool]:
        paths = {**super().required_paths(), "finetune.train.annotation": False, "finetune.train.video_root": True}
        split = self.cfg.finetune.train
        if split.get("class_names"):
            paths["finetune.train.class_names"] = False
        if self.cfg.finetune.head_map.file:
            paths["finetune.head_map.file"] = False
        return paths

    def check_config(self, cfg: DictConfig) -> None:
        self.cfg = cfg  # the Trainer checks before it keeps cfg; required_paths reads it
        super().check_config(cfg)
        ft = cfg.finetune
        if not 0.0 < float(ft.layer_decay) <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1], got {ft.layer_decay}")
        if ft.pool not in POOLS:
            raise ConfigError(f"finetune.pool must be one of {POOLS}, got {ft.pool!r}")
        aug = ft.augment
        if int(aug.repeats) < 1 or not 0.0 <= float(aug.random_erasing) <= 1.0:
            raise ConfigError(f"finetune.augment: need repeats >= 1 and random_erasing in [0, 1], got repeats="
                              f"{aug.repeats}, random_erasing={aug.random_erasing}")
        if aug.rand_augment:
            try:
                ClipRandAugment(str(aug.rand_augment))
            except (AssertionError, ValueError, KeyError) as e:
                raise ConfigError(f"finetune.augment.rand_augment={aug.rand_augment!r} is not a timm RandAugment "
                                  f"string like 'rand-m7-n4-mstd0.5-inc1' ({e})") from None
        clips = int(cfg.train.batch_size) * int(aug.repeats)
        if (ft.mixup.mixup_alpha > 0 or ft.mixup.cutmix_alpha > 0) and clips % 2:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} x finetune.augment.repeats={aug.repeats} "
                              "must be even with mixup/cutmix (timm's Mixup pairs each clip with the batch reversed)")
        if bool(ft.head_map.file) != bool(ft.head_map.source):
            raise ConfigError("finetune.head_map needs both file (a K710 label_map.json) and source (e.g. k400)")

    # -- data --------------------------------------------------------------------------------------
    @functools.cached_property
    def train_split(self) -> tuple[list[VideoText], list[str]]:
        """The training videos with their labels, and the class names (read once: the model needs their count)."""
        split = self.cfg.finetune.train
        return load_kinetics(str(split.annotation), str(split.video_root), class_names=split.get("class_names"),
                             filename_pattern=split.get("filename_pattern") or KINETICS_PATTERN,
                             split=split.get("split"), missing="drop")

    def train_samples(self) -> list[Sample]:
        return [Sample(r.video, i, label=r.label) for i, r in enumerate(self.train_split[0])]

    def loader_augment(self) -> tuple[ClipRandAugment | None, int]:
        """UMT's RandAugment (one draw per clip) before the crop, and its repeated augmentation."""
        aug = self.cfg.finetune.augment
        rand = ClipRandAugment(str(aug.rand_augment), self.model_cfg.image_size) if aug.rand_augment else None
        return rand, int(aug.repeats)

    # -- model -------------------------------------------------------------------------------------
    def build_model(self) -> ViCLIPClassifier:
        cfg = self.cfg
        self.num_classes = len(self.train_split[1])
        head_rows = None
        if cfg.finetune.head_map.file:
            label_map = read_label_map(cfg.finetune.head_map.file)
            if cfg.finetune.head_map.source not in label_map.sources:
                raise ConfigError(f"finetune.head_map.source={cfg.finetune.head_map.source!r} is not in "
                                  f"{cfg.finetune.head_map.file} (sources: {sorted(label_map.sources)})")
            head_rows = label_map.sources[cfg.finetune.head_map.source]
            kept = [label_map.classes[i] for i in head_rows]
            ours = [k710_name(n) for n in self.train_split[1]]
            if kept != ours:
                first = next((i for i, (a, b) in enumerate(zip(kept, ours)) if a != b), min(len(kept), len(ours)))
                raise ConfigError(
                    f"finetune.head_map: the {cfg.finetune.head_map.source} classes of {cfg.finetune.head_map.file} "
                    f"({len(kept)}) are not the training split's ({len(ours)}) in its label order; first difference "
                    f"at label {first}: give make_k710 the label file in the split's order (sorted labels by default)")
        overrides = OmegaConf.to_container(cfg.model.overrides)
        path = str(cfg.checkpoint)
        model = classifier_from_checkpoint(path, self.num_classes, head_rows=head_rows, pool=str(cfg.finetune.pool),
                                           **overrides)
        self.model_cfg = model.cfg  # the checkpoint's config with the overrides (read once, by the classifier)
        self.pool = model.pool  # a fine-tuned classifier keeps its own
        if self.info.is_main:
            rows = f", head rows of {cfg.finetune.head_map.source}" if head_rows is not None else ""
            print(f"fine-tuning {path} for {self.num_classes}-way recognition: {self.model_cfg.num_frames} frames, "
                  f"{self.pool} pooling, drop path {self.model_cfg.drop_path_rate}, layer decay "
                  f"{cfg.finetune.layer_decay}{rows}", flush=True)
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """timm's layer-decay groups: block ``i`` of ``L`` at ``layer_decay ** (L - i)``, embeddings one
        step lower, ``ln_post``/``proj``/head at 1; no weight decay on vectors and embedding tables."""
        return param_groups_layer_decay(model, weight_decay=float(self.cfg.optim.weight_decay),
                                        no_weight_decay_list=model.no_weight_decay(),
                                        layer_decay=float(self.cfg.finetune.layer_decay))

    # -- loss --------------------------------------------------------------------------------------
    def build_loss(self) -> torch.nn.Module:
        ft = self.cfg.finetune
        m = ft.mixup
        erasing = float(ft.augment.random_erasing)
        self.erase = ClipErasing(erasing) if erasing > 0 else None
        self.mixup = None
        if m.mixup_alpha > 0 or m.cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=float(m.mixup_alpha), cutmix_alpha=float(m.cutmix_alpha),
                               prob=float(m.prob), switch_prob=float(m.switch_prob), mode=str(m.mode),
                               label_smoothing=float(ft.label_smoothing), num_classes=self.num_classes)
            return SoftTargetCrossEntropy()  # the smoothing is in Mixup's soft targets
        if ft.label_smoothing > 0:
            return LabelSmoothingCrossEntropy(smoothing=float(ft.label_smoothing))
        return torch.nn.CrossEntropyLoss()

    def forward_loss(self, batch: dict, phase: Phase) -> torch.Tensor:
        device = self.info.device
        video = self.loader.normalize(batch["video"].to(device, non_blocking=True), self.dtype)
        target = batch["label"].to(device, non_blocking=True)
        if self.erase is not None:  # after normalisation, before mixup, as UMT
            video = self.erase(video)
        if self.mixup is not None:
            video, target = mix_clips(self.mixup, video, target)
        return self.loss_fn(self.engine(video).float(), target)

    def after_step(self) -> None:
        """Nothing to clamp: a classifier has no temperature."""

    def write_weights(self, path: Path) -> str:
        """The classifier (fp32 master weights) in the official layout, with its config; rank 0 writes,
        every rank calls it."""
        sd = fp32_state_dict(self.engine)
        if self.info.is_main:
            model = ViCLIPClassifier(self.model_cfg, self.num_classes, pool=self.pool)
            model.load_state_dict(sd)
            export_official(model, path)
        return str(path)

    def export(self, phase: Phase) -> str:
        """The best epoch's weights when evaluating every epoch (the base's), else the last ones."""
        if self.cfg.finetune.eval is not None:
            return super().export(phase)
        path = self.write_weights(self.run_dir / "weights" / f"{phase.name}.pth")
        if self.info.is_main:
            print(f"[{phase.name}] exported the classifier to {path}", flush=True)
        return path

    def flops_per_clip(self, phase: Phase) -> float:
        """Forward + backward of the video tower (the head's FLOPs are negligible), per video of a batch:
        its ``repeats`` clips."""
        return 3 * forward_flops(self.engine.module.cfg, 0.0, text=False) * int(self.cfg.finetune.augment.repeats)
