"""The ViCLIP video tower: a CLIP ViT with joint attention over every (frame, patch) token.

Parameter names follow the official release (``conv1``, ``class_embedding``,
``positional_embedding``, ``temporal_positional_embedding``, ``transformer.resblocks.N.{attn,ln_1,
mlp.c_fc,mlp.c_proj,ln_2}``, ``ln_post``, ``proj``) so official checkpoints load strictly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU; the released weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, computed by SDPA.

    SDPA dispatches to FlashAttention / memory-efficient kernels on GPUs (bf16/fp16), so no
    flash-attn package is needed; on the CPU it falls back to the math kernel.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, c))


class DropTokenPath(DropPath):
    """timm's DropPath as the official blocks apply it: they run sequence-first (``[L, B, C]``), so the
    per-"sample" draw falls on the first axis and drops one token position for the whole batch.

    ``drop_path_mode='official'`` uses this; ``'sample'`` uses DropPath on our batch-first tokens
    (whole samples, the usual stochastic depth). See docs/fidelity.md.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(0, 1)).transpose(0, 1)


_DROP_PATHS = {"official": DropTokenPath, "sample": DropPath}


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block with stochastic depth on both branches (per token position or per sample)."""

    def __init__(self, width: int, heads: int, drop_path: float = 0.0, drop_path_mode: str = "official"):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)
        drop = _DROP_PATHS[drop_path_mode]
        self.drop_path1 = drop(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = drop(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.ln_1(x)))
        return x + self.drop_path2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of blocks on batch-first tokens, with a switch for activation checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, drop_path_rate: float = 0.0,
                 drop_path_mode: str = "official"):
        super().__init__()
        rates = [drop_path_rate * i / max(layers - 1, 1) for i in range(layers)]  # linspace(0, rate)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, r, drop_path_mode) for r in rates)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def random_keep(batch: int, length: int, mask_ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """Indices ``[B, keep]`` of the ``length - int(mask_ratio * length)`` tokens each sample keeps, in order.

    Dropped tokens are removed (not zeroed), so attention and MLP cost fall with the ratio; the
    choice differs per sample (argsort of uniform noise, as MAE and the official code do).
    """
    keep = length - int(mask_ratio * length)
    return torch.rand(batch, length, device=device).argsort(dim=1)[:, :keep].sort(dim=1).values


def fit_temporal_embedding(embed: torch.Tensor, length: int) -> torch.Tensor:
    """A position table ``[1, T, C]`` fitted to ``[1, length, C]`` by the official loader's rule
    (``load_temp_embed_with_mismatch``, ``add_zero=False``): a longer table is the linear resampling of all
    ``T`` rows (``align_corners=False``), a shorter one keeps the first ``length`` rows. Used for the
    temporal table at another frame count and, in fine-tuning, the text position table."""
    if length <= embed.shape[1]:
        return embed[:, :length]
    resized = F.interpolate(embed.float().transpose(1, 2), size=length, mode="linear", align_corners=False)
    return resized.transpose(1, 2).to(embed.dtype)


class VisionTransformer(nn.Module):
    """Spatiotemporal ViT: per-frame (or per-tubelet) patches, 2-D CLIP positions shared by all frames,
    a learned temporal embedding on patch tokens, one class token, joint attention over all tokens."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        num_frames: int = 8,
        tubelet_size: int = 1,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = "official",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not a multiple of tubelet_size {tubelet_size}")
        self.image_size, self.patch_size, self.tubelet_size = image_size, patch_size, tubelet_size
        self.num_frames = num_frames
        kernel = (tubelet_size, patch_size, patch_size)
        self.conv1 = nn.Conv3d(3, width, kernel_size=kernel, stride=kernel, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames // tubelet_size, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, drop_path_rate, drop_path_mode)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, x: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """Patch tokens with their positions, ``[B, L, C]``: all of them, or a random kept share.

        When masking, the kept patches are drawn first and only they go through ``conv1``: a stride-equal
        Conv3d is a linear map of each patch, so its weights apply as one matmul to the gathered patches
        (the same tokens as embedding everything and then dropping, without paying for the dropped ones).
        """
        if x.ndim == 4:
            # An image is a clip of one tubelet of identical frames.
            x = x.unsqueeze(1).expand(-1, self.tubelet_size, -1, -1, -1)
        kt, p = self.tubelet_size, self.patch_size
        b, frames, _, height, width = x.shape
        t, gh, gw = frames // kt, height // p, width // p  # conv1's output grid (a remainder is dropped)
        n = gh * gw
        if n + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"input of {n} patches per frame does not match positional_embedding "
                f"({self.positional_embedding.shape[0] - 1} patches for image_size {self.image_size})"
            )
        temporal = self.temporal_positional_embedding[0]
        if t == 1:
            # Images: the official code adds the mean temporal embedding (keeps the parameter used).
            temporal = temporal.mean(0, keepdim=True)
        elif t != temporal.shape[0]:
            raise ValueError(
                f"got {t * kt} frames but the model has a temporal embedding for "
                f"{self.num_frames}; load weights with a matching num_frames (weights are interpolated)"
            )
        if mask_ratio <= 0:
            x = self.conv1(x.transpose(1, 2)).flatten(3).permute(0, 2, 3, 1)  # [B, T', N, C]
            x = x + self.positional_embedding[1:].to(x.dtype) + temporal.unsqueeze(1).to(x.dtype)
            return x.reshape(b, t * n, -1)
        ids = random_keep(b, t * n, mask_ratio, x.device)  # token index = frame * N + row * W' + column
        grid = x[:, : t * kt, :, : gh * p, : gw * p].view(b, t, kt, 3, gh, p, gw, p)
        rows = torch.arange(b, device=x.device).unsqueeze(1)
        patches = grid[rows, ids // n, :, :, ids % n // gw, :, ids % gw, :]  # [B, K, kt, 3, p, p]
        # conv1.weight is [C, 3, kt, p, p]: order each patch's pixels the same way.
        x = patches.transpose(2, 3).reshape(b, ids.shape[1], -1) @ self.conv1.weight.flatten(1).T
        return x + self.positional_embedding[1:][ids % n].to(x.dtype) + temporal[ids // n].to(x.dtype)

    def forward_tokens(self, x: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """Every token after the last block, ``[B, 1 + L, C]`` (class token first), before ``ln_post``.

        The shared trunk of :meth:`forward` and ``ViCLIP.forward_features`` (token features for a connector).
        """
        x = self.embed(x, mask_ratio)
        b, _, c = x.shape
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, c)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        return self.transformer(x)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """``x``: float ``[B, T, 3, H, W]`` (or ``[B, 3, H, W]`` for images) -> ``[B, output_dim]``."""
        return self.ln_post(self.forward_tokens(x, mask_ratio)[:, 0]) @ self.proj
