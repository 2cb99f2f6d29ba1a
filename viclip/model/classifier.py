"""ViCLIP's video tower with a linear head: the model of fine-tuned recognition (paper Table 3).

The head sits on the video embedding (``encode_video``: class token, ``ln_post``, ``proj``), the feature
the pre-training made class-separable, and starts near zero (trunc-normal std 0.02 times ``init_scale``
0.001, UMT's ``--init_scale``) so the first steps do not disturb the tower. The tower keeps ViCLIP's
parameter names under ``vision_encoder.``, so a ViCLIP checkpoint loads into it unchanged (its text
tower is left out) and an exported classifier holds ``vision_encoder.*`` plus ``head.*`` in the official
``{'model': ...}`` layout with the config beside it.

``pool="mean"`` is UMT's head instead (its ``--use_mean_pooling``, the default of its fine-tuning): the
mean of the last block's patch tokens, a new LayerNorm (``fc_norm``) and the linear head on the full
width, weight and bias scaled by ``init_scale``; ``ln_post`` and ``proj`` are then unused and frozen. A
checkpoint with ``fc_norm.*`` is such a classifier.

:meth:`ViCLIPClassifier.layer_id` is the layer-id function timm's ``param_groups_layer_decay`` groups
by (through ``group_matcher``): 0 for the embeddings, ``i + 1`` for block ``i``, ``layers + 1`` for
``ln_post``, ``proj`` and the head, so block ``i`` learns at ``lr * layer_decay ** (layers - i)`` as in
BEiT, VideoMAE and UMT.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from viclip.model.viclip import ViCLIPConfig, with_overrides
from viclip.model.vision import VisionTransformer
from viclip.model.weights import (
    _TEMPORAL_KEY,
    CheckpointError,
    check_state_dict,
    fit_temporal_embedding,
    load_checkpoint_file,
    read_config,
)

_BLOCK = re.compile(r"^vision_encoder\.transformer\.resblocks\.(\d+)\.")
POOLS = ("cls", "mean")  # the video embedding (class token, ln_post, proj) | UMT's mean of patch tokens
_EMBEDDINGS = ("vision_encoder.conv1.", "vision_encoder.class_embedding", "vision_encoder.positional_embedding",
               "vision_encoder.temporal_positional_embedding", "vision_encoder.ln_pre.")


class ViCLIPClassifier(nn.Module):
    """``[B, T, 3, H, W]`` normalised pixels -> class logits ``[B, num_classes]``."""

    def __init__(self, cfg: ViCLIPConfig, num_classes: int, init_scale: float = 0.001, pool: str = "cls"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.cfg, self.num_classes, self.pool = cfg, num_classes, pool
        self.vision_encoder = VisionTransformer(
            image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=cfg.layers,
            heads=cfg.heads, output_dim=cfg.embed_dim, num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size,
            drop_path_rate=cfg.drop_path_rate, drop_path_mode=cfg.drop_path_mode,
        )
        self.vision_encoder.transformer.grad_checkpointing = cfg.grad_checkpointing
        if pool == "mean":
            self.fc_norm = nn.LayerNorm(cfg.width)
            self.vision_encoder.ln_post.requires_grad_(False)
            self.vision_encoder.proj.requires_grad_(False)
        self.head = nn.Linear(cfg.width if pool == "mean" else cfg.embed_dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
            self.head.bias.mul_(init_scale)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """The feature the head reads (never masked): the video embedding ``[B, embed_dim]``, or with
        ``pool="mean"`` the normalised mean of the patch tokens ``[B, width]``."""
        if self.pool == "mean":
            return self.fc_norm(self.vision_encoder.forward_tokens(video, mask_ratio=0.0)[:, 1:].mean(1))
        return self.vision_encoder(video, mask_ratio=0.0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode_video(video))

    def no_weight_decay(self) -> set[str]:
        """The tower's embedding tables (biases and norms are left out of decay by ndim)."""
        return {"vision_encoder.class_embedding", "vision_encoder.positional_embedding",
                "vision_encoder.temporal_positional_embedding"}

    def layer_id(self, name: str) -> int:
        """The depth of parameter ``name`` for layer-wise lr decay (see the module docstring)."""
        if name.startswith(_EMBEDDINGS):
            return 0
        block = _BLOCK.match(name)
        return int(block.group(1)) + 1 if block else self.cfg.layers + 1

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's grouping interface (``param_groups_layer_decay``): one group per layer id."""
        return self.layer_id


def classifier_from_checkpoint(
    path: str | os.PathLike, num_classes: int | None = None, head_rows: Sequence[int] | None = None,
    pool: str = "cls", **overrides,
) -> ViCLIPClassifier:
    """A classifier initialised from a ViCLIP checkpoint (a new head of ``num_classes`` on ``pool``) or
    from a fine-tuned classifier (its head and pooling; ``head_rows`` keeps those rows in that order, e.g.
    the K400 classes of a K710 head). ``overrides`` replace config fields (``num_frames``, ``drop_path_rate``);
    the temporal embedding is resampled to the frame count, as :func:`viclip.model.load_weights` does."""
    cfg = with_overrides(read_config(path), **overrides)
    sd = {k: v for k, v in load_checkpoint_file(path).items()
          if k.startswith(("vision_encoder.", "head.", "fc_norm."))}
    if "head.weight" in sd:
        if head_rows is not None:
            rows = torch.as_tensor(list(head_rows), dtype=torch.long)
            if len(rows) == 0 or int(rows.max()) >= sd["head.weight"].shape[0] or int(rows.min()) < 0:
                raise CheckpointError(f"{path}: head_rows index outside its head of {sd['head.weight'].shape[0]} "
                                      "classes (is the label map that of this checkpoint?)")
            sd["head.weight"], sd["head.bias"] = sd["head.weight"][rows], sd["head.bias"][rows]
        found = sd["head.weight"].shape[0]
        if num_classes is not None and num_classes != found:
            raise CheckpointError(f"{path}: its head has {found} classes, the task {num_classes}; give the label "
                                  "map that maps its classes to the task's (head_rows)")
        num_classes = found
    elif num_classes is None:
        raise CheckpointError(f"{path}: a ViCLIP checkpoint without a classification head; give num_classes")
    elif head_rows is not None:
        raise CheckpointError(f"{path}: head_rows needs a fine-tuned classifier checkpoint (this one has no head)")
    if "head.weight" in sd:
        pool = "mean" if "fc_norm.weight" in sd else "cls"  # a fine-tuned classifier keeps its head
    model = ViCLIPClassifier(cfg, num_classes, pool=pool)
    own = model.state_dict()
    if "head.weight" not in sd:
        sd.update({k: v for k, v in own.items() if k.startswith(("head.", "fc_norm."))})
    if _TEMPORAL_KEY in sd and sd[_TEMPORAL_KEY].shape != own[_TEMPORAL_KEY].shape:
        sd[_TEMPORAL_KEY] = fit_temporal_embedding(sd[_TEMPORAL_KEY], own[_TEMPORAL_KEY].shape[1])
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model

