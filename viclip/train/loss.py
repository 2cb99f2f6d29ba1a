"""Symmetric video-text InfoNCE over features gathered from all ranks (ViCLIP's contrastive loss).

Reads like open_clip's ``ClipLoss``: a small module, a pure function of the features and the
temperature, the distributed choices as constructor arguments.

Positives follow the official ViCLIP criterion: every pair of rows that share a sample ``index`` is a
positive, and the target of a row is spread evenly over its positives (without ``index`` the
diagonal is the only positive). ``same_video`` decides what a pair of *different* samples cut from one
source video (equal ``video_id``) is: an ordinary negative (official), removed from the denominator
(``ignore``), or an extra positive (``positive``).

World-size factor: features are gathered with gradient, and the backward of the gather sums the
column gradients of every rank onto the rank that owns the rows. In the local form rank r returns the
mean over its own rows, so the mean of the ranks' losses equals the single-process loss on the
concatenated batch and each rank's feature gradient is ``world_size`` times the single-process one;
in the global form every rank returns the full loss and the feature gradient carries the same
factor. Data parallelism averages parameter gradients over ranks, which divides it out again.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from viclip.errors import ConfigError
from viclip.model import ViCLIPConfig

SameVideo = Literal["negative", "ignore", "positive"]
SAME_VIDEO_CHOICES = ("negative", "ignore", "positive")


def gather_with_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; gradients flow back to the owning rank."""
    if world_size == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate an integer tensor (sample index, video id) from all ranks along dim 0."""
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def soft_target_nll(logits: torch.Tensor, positive: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows of -sum_j t_ij log softmax(logits)_ij, with t uniform over each row's positives.

    ``ignore`` pairs are removed from the softmax denominator. Masked entries are zeroed with
    ``where`` rather than multiplied, because 0 * -inf is NaN.
    """
    if ignore is not None:
        logits = logits.masked_fill(ignore, float("-inf"))
    log_prob = logits.log_softmax(dim=-1)
    target = positive.to(log_prob.dtype)
    target = target / target.sum(dim=-1, keepdim=True)
    return -(torch.where(positive, log_prob, 0.0) * target).sum(dim=-1).mean()


class ClipLoss(nn.Module):
    """Symmetric InfoNCE, logits = cos / temp with temp floored at ``temp_min``.

    Args:
        local_loss: each rank scores its own rows against all gathered columns (memory
            B_local x B_global). False reproduces the official global B_global x B_global computation.
        same_video: what a pair of different samples from one source video is.
        rank, world_size: of the data-parallel group (1 process: 0, 1).
        temp_min: the model config's floor (``ViCLIPConfig.temp_min``), the one definition of it.
    """

    def __init__(self, local_loss: bool = True, same_video: SameVideo = "negative", rank: int = 0,
                 world_size: int = 1, temp_min: float = ViCLIPConfig.temp_min) -> None:
        super().__init__()
        if same_video not in SAME_VIDEO_CHOICES:
            raise ConfigError(f"loss.same_video must be one of {SAME_VIDEO_CHOICES}, got {same_video!r}")
        self.local_loss = local_loss
        self.same_video = same_video
        self.rank = rank
        self.world_size = world_size
        self.temp_min = temp_min

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' features, with gradient (a subclass may time it: bench/train_step.py)."""
        return gather_with_grad(x, self.world_size)

    def pair_masks(self, n_rows: int, n_cols: int, row_offset: int, device: torch.device,
                   index_rows: torch.Tensor | None, index_cols: torch.Tensor | None,
                   vid_rows: torch.Tensor | None, vid_cols: torch.Tensor | None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boolean (positive, ignore) masks of shape [n_rows, n_cols]; ignore is None when unused."""
        if index_rows is None:
            positive = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
            rows = torch.arange(n_rows, device=device)
            positive[rows, rows + row_offset] = True
        else:
            positive = index_rows[:, None] == index_cols[None, :]
        if self.same_video == "negative":
            return positive, None
        if vid_rows is None:
            raise ValueError(f"loss.same_video={self.same_video!r} needs the batch's video_id")
        same = (vid_rows[:, None] == vid_cols[None, :]) & ~positive
        if self.same_video == "positive":
            return positive | same, None
        return positive, same

    def forward(self, video_features: torch.Tensor, text_features: torch.Tensor, temp: torch.Tensor,
                index: torch.Tensor | None = None, video_id: torch.Tensor | None = None) -> torch.Tensor:
        """Loss on this rank's batch. Features are unnormalised [B_local, D]; index/video_id int64 [B_local].

        Computed in float32: with temp 0.01 the logits reach +-100, too coarse in bf16.
        """
        v = F.normalize(video_features.float(), dim=-1)
        t = F.normalize(text_features.float(), dim=-1)
        inv_temp = 1.0 / temp.float().clamp(min=self.temp_min)
        ws = self.world_size
        all_v, all_t = self.gather(v), self.gather(t)
        all_index = gather_no_grad(index, ws) if index is not None else None
        all_vid = gather_no_grad(video_id, ws) if video_id is not None and self.same_video != "negative" else None

        if self.local_loss:
            rows_v, rows_t, rows_index, rows_vid = v, t, index, video_id
            offset = self.rank * v.shape[0]
        else:
            rows_v, rows_t, rows_index, rows_vid = all_v, all_t, all_index, all_vid
            offset = 0
        positive, ignore = self.pair_masks(rows_v.shape[0], all_t.shape[0], offset, v.device,
                                           rows_index, all_index, rows_vid, all_vid)
        # Pair relations are symmetric, so the text->video rows use the same masks.
        loss_v2t = soft_target_nll(inv_temp * rows_v @ all_t.T, positive, ignore)
        loss_t2v = soft_target_nll(inv_temp * rows_t @ all_v.T, positive, ignore)
        return (loss_v2t + loss_t2v) / 2
