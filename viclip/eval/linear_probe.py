"""Linear probing (paper Table 16): multinomial logistic regression on frozen video embeddings.

CLIP's protocol in torch, so it runs on the GPU next to the features and adds no dependency:
full-batch L-BFGS on mean cross-entropy + ``l2 * ||W||^2``, the L2 strength chosen by a small sweep
on a held-out part of the training split, then refit on the whole training split and scored on
the evaluation split. Features are L2-normalised (as the model compares them) and standardised
with training statistics, which keeps L-BFGS well conditioned at every sweep value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from viclip.errors import ConfigError, DataError
from viclip.eval.metrics import topk_accuracy

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearClassifier:
    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D] standardisation, from the training features
    std: torch.Tensor  # [D]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (F.normalize(features.float(), dim=-1) - self.mean) / self.std
        return x @ self.weight.T + self.bias


def fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
        max_iter: int = 500) -> LinearClassifier:
    """Logistic regression from zero weights (deterministic for a given input)."""
    x = F.normalize(features.float(), dim=-1)
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearClassifier(weight.detach(), bias.detach(), mean, std)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): a seeded permutation, so the sweep is reproducible."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"linear_probe.holdout must be in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, round(n * fraction))
    if n_hold >= n:
        raise DataError(f"the training split has {n} items: too few to hold out {fraction:.0%} for the sweep")
    return perm[n_hold:], perm[:n_hold]


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, num_classes: int,
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID, holdout: float = 0.1, seed: int = 0, max_iter: int = 500,
) -> dict:
    """Sweep ``l2_grid`` on a held-out part of train (top-1), refit on all of train, score val.

    Returns the val metrics (top1, top5, avg) plus the chosen ``l2`` and the sweep's top-1 per value.
    """
    fit_idx, hold_idx = holdout_split(train_x.shape[0], holdout, seed)
    sweep = {}
    for l2 in l2_grid:
        clf = fit(train_x[fit_idx], train_y[fit_idx], num_classes, l2, max_iter)
        sweep[l2] = topk_accuracy(clf.logits(train_x[hold_idx]).cpu(), train_y[hold_idx].cpu(), ks=(1,))["top1"]
    best = max(l2_grid, key=lambda v: (sweep[v], v))  # ties: the stronger regulariser
    clf = fit(train_x, train_y, num_classes, best, max_iter)
    metrics = topk_accuracy(clf.logits(val_x).cpu(), val_y.cpu())
    return {**metrics, "l2": best, "sweep_top1": {f"{k:g}": v for k, v in sweep.items()}}
