"""ViCLIP: a spatiotemporal ViT video tower and a CLIP text tower trained with InfoNCE."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viclip.errors import ConfigError
from viclip.model.text import build_text_tower
from viclip.model.tokenizer import tokenize
from viclip.model.vision import VisionTransformer

# Sane bounds of the integer fields: a typo or a corrupt config fails here in one line, not as an
# out-of-memory or a shape error deep in a tower.
_INT_BOUNDS = {
    "image_size": (1, 4096), "patch_size": (1, 1024), "num_frames": (1, 1024), "tubelet_size": (1, 64),
    "width": (1, 16384), "layers": (1, 512), "heads": (1, 512), "embed_dim": (1, 16384),
    "text_width": (1, 16384), "text_layers": (1, 512), "text_heads": (1, 512), "context_length": (1, 4096),
    "vocab_size": (1, 10_000_000),
}
DROP_PATH_MODES = ("official", "sample")


@dataclass(frozen=True)
class ViCLIPConfig:
    """Everything needed to rebuild a ViCLIP model; saved beside checkpoints and exports.

    Fields are checked at construction (types, bounds, divisibility): a bad value is a ConfigError naming it.
    """

    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 8
    tubelet_size: int = 1  # temporal kernel of conv1; the released models use 1
    width: int = 1024
    layers: int = 24
    heads: int = 16
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408
    drop_path_rate: float = 0.1
    drop_path_mode: str = "official"  # see viclip.model.vision.DropTokenPath; docs/fidelity.md
    grad_checkpointing: bool = False
    freeze_text: bool = True
    temp_init: float = 0.01
    temp_min: float = 0.01

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ConfigError(f"ViCLIPConfig.{name} must be an integer in [{low}, {high}], got {value!r}")
        for name, what in (("grad_checkpointing", bool), ("freeze_text", bool), ("drop_path_mode", str)):
            if type(getattr(self, name)) is not what:
                raise ConfigError(f"ViCLIPConfig.{name} must be a {what.__name__}, got {getattr(self, name)!r}")
        if type(self.drop_path_rate) not in (int, float) or not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"ViCLIPConfig.drop_path_rate must be a number in [0, 1), got {self.drop_path_rate!r}")
        for name in ("temp_init", "temp_min"):
            if type(getattr(self, name)) not in (int, float) or not 0 < getattr(self, name) <= 100:
                raise ConfigError(f"ViCLIPConfig.{name} must be a number in (0, 100], got {getattr(self, name)!r}")
        if self.drop_path_mode not in DROP_PATH_MODES:
            raise ConfigError(f"ViCLIPConfig.drop_path_mode must be one of {DROP_PATH_MODES}, "
                              f"got {self.drop_path_mode!r}")
        for a, b in (("image_size", "patch_size"), ("num_frames", "tubelet_size"), ("width", "heads"),
                     ("text_width", "text_heads")):
            if getattr(self, a) % getattr(self, b):
                raise ConfigError(f"ViCLIPConfig.{a}={getattr(self, a)} is not a multiple of "
                                  f"{b}={getattr(self, b)}")


@dataclass(frozen=True)
class VideoFeatures:
    """What :meth:`ViCLIP.forward_features` returns: the tokens a video-language model reads, and the embedding."""

    class_token: torch.Tensor  # [B, W]
    patch_tokens: torch.Tensor  # [B, T', N, W]: T' = frames / tubelet_size, N patches per frame, row-major
    embedding: torch.Tensor  # [B, D], = encode_video(video)


MODEL_CONFIGS: dict[str, ViCLIPConfig] = {
    "vit_l14": ViCLIPConfig(grad_checkpointing=True),
    "vit_b16": ViCLIPConfig(
        patch_size=16, width=768, layers=12, heads=12, embed_dim=512, text_width=512, text_layers=12, text_heads=8
    ),
    # Test and demo size: seconds per step on a CPU. Tubelets of 2 frames make motion direction
    # learnable from scratch at this size (see docs/architecture.md, "The demo task, measured").
    "tiny": ViCLIPConfig(
        image_size=32, patch_size=8, num_frames=8, tubelet_size=2, width=64, layers=2, heads=4, embed_dim=64,
        text_width=64, text_layers=2, text_heads=4, drop_path_rate=0.0, freeze_text=False,
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_CONFIGS)


def get_config(name: str, **overrides) -> ViCLIPConfig:
    """The registered config ``name`` with fields replaced by ``overrides``."""
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return with_overrides(MODEL_CONFIGS[name], **overrides)


def with_overrides(cfg: ViCLIPConfig, **overrides) -> ViCLIPConfig:
    """``cfg`` with fields replaced (``model.overrides``, ``load_model(**overrides)``); checked like any config."""
    fields = {f.name for f in dataclasses.fields(ViCLIPConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown ViCLIPConfig field(s) {sorted(unknown)}; known: {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides)


class ViCLIP(nn.Module):
    """Dual encoder. ``encode_video``/``encode_text`` return unnormalised embeddings; ``temp`` is the
    linear temperature of the official release (logits = cosine / temp)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.heads,
            output_dim=cfg.embed_dim,
            num_frames=cfg.num_frames,
            tubelet_size=cfg.tubelet_size,
            drop_path_rate=cfg.drop_path_rate,
            drop_path_mode=cfg.drop_path_mode,
        )
        self.text_encoder = build_text_tower(
            cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.embed_dim, cfg.context_length, cfg.vocab_size
        )
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))
        self.set_grad_checkpointing(cfg.grad_checkpointing)
        if cfg.freeze_text:
            self.text_encoder.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (both towers): memory for ~30 % more compute."""
        self.vision_encoder.transformer.grad_checkpointing = enable
        self.text_encoder.set_grad_checkpointing(enable)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` (or ``[B, 3, H, W]``) normalised pixels -> ``[B, D]``; never masked."""
        return self.vision_encoder(video, mask_ratio=0.0)

    def forward_features(self, video: torch.Tensor, ln_post: bool = True) -> VideoFeatures:
        """Token features of ``[B, T, 3, H, W]`` normalised pixels for a downstream model; never masked.

        ``ln_post=True`` gives the tokens after the final LayerNorm (what ``proj`` sees), ``False`` the last
        block's raw output. Either way ``embedding`` is exactly :meth:`encode_video`'s.
        """
        vision = self.vision_encoder
        tokens = vision.forward_tokens(video, mask_ratio=0.0)
        cls = vision.ln_post(tokens[:, 0])  # the pooled path's own op, so the embedding matches bit for bit
        patches = tokens[:, 1:]
        b, _, w = patches.shape
        grid = (vision.image_size // vision.patch_size) ** 2
        patches = patches.reshape(b, -1, grid, w)
        return VideoFeatures(class_token=cls if ln_post else tokens[:, 0],
                             patch_tokens=vision.ln_post(patches) if ln_post else patches,
                             embedding=cls @ vision.proj)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (see ``viclip.tokenize``) -> ``[N, D]``."""
        return self.text_encoder(tokens)

    def forward(
        self, video: torch.Tensor, tokens: torch.Tensor, mask_ratio: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: (video features with ``mask_ratio`` of patches dropped, text features)."""
        return self.vision_encoder(video, mask_ratio=mask_ratio), self.encode_text(tokens)

    @torch.no_grad()
    def clamp_temp(self) -> None:
        """Keep temp >= temp_min (the official recipe clamps before every step)."""
        self.temp.clamp_(min=self.cfg.temp_min)

    def no_weight_decay(self) -> set[str]:
        """Embedding tables and temp; biases and norm weights are excluded by the optimizer by ndim."""
        return {
            "temp",
            "vision_encoder.class_embedding",
            "vision_encoder.positional_embedding",
            "vision_encoder.temporal_positional_embedding",
            "text_encoder.token_embedding.weight",
            "text_encoder.positional_embedding",
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write a Hugging Face-style folder (config.json + model.safetensors); see viclip.model.hub."""
        from viclip.model.hub import save_pretrained  # hub imports this module

        return save_pretrained(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload the save_pretrained folder to the Hugging Face Hub; see viclip.model.hub.push_to_hub."""
        from viclip.model.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


def create_model(name: str = "vit_l14", **overrides) -> ViCLIP:
    """A randomly initialised ViCLIP of a registered size; ``overrides`` replace config fields."""
    return ViCLIP(get_config(name, **overrides))


def vision_tokens(cfg: ViCLIPConfig, mask_ratio: float = 0.0) -> int:
    """Tokens entering the vision blocks: the kept patch tokens plus the class token."""
    patches = (cfg.num_frames // cfg.tubelet_size) * (cfg.image_size // cfg.patch_size) ** 2
    return patches - int(mask_ratio * patches) + 1


def forward_flops(cfg: ViCLIPConfig, mask_ratio: float = 0.0, text: bool = True) -> int:
    """Analytic forward FLOPs per clip (2 per multiply-add; LayerNorm, softmax, biases ignored).

    Per block of width w over n tokens: 24 n w^2 (qkv, out-proj, 4x MLP) + 4 n^2 w (QK^T and AV).
    Backward costs about twice the forward, so a training step is ~3x this (more with recompute).
    """
    n = vision_tokens(cfg, mask_ratio)
    w = cfg.width
    patch_embed = 2 * (n - 1) * (3 * cfg.tubelet_size * cfg.patch_size**2) * w  # conv1 on the kept patches only
    vision = patch_embed + cfg.layers * (24 * n * w * w + 4 * n * n * w) + 2 * w * cfg.embed_dim
    if not text:
        return vision
    t, tw = cfg.context_length, cfg.text_width
    return vision + cfg.text_layers * (24 * t * tw * tw + 4 * t * t * tw) + 2 * tw * cfg.embed_dim


@torch.no_grad()
def zero_shot(
    model: ViCLIP,
    videos: torch.Tensor,
    class_names: list[str],
    templates: list[str] | None = None,
    official_cleaning: bool = True,
) -> torch.Tensor:
    """Class probabilities ``[B, C]`` for normalised videos ``[B, T, 3, H, W]``.

    Each class is scored by the mean over ``templates`` (``"{}"`` placeholders) of the cosine
    similarity, the official protocol; probabilities are a softmax of those scores / temp.
    """
    templates = templates or ["{}"]
    device = next(model.parameters()).device
    v = F.normalize(model.encode_video(videos.to(device)).float(), dim=-1)
    prompts = [tpl.format(name) for name in class_names for tpl in templates]
    tokens = tokenize(prompts, context_length=model.cfg.context_length, official_cleaning=official_cleaning)
    t = F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1)
    sims = (v @ t.T).view(len(videos), len(class_names), len(templates)).mean(-1)
    return (sims / model.temp.float()).softmax(dim=-1)
