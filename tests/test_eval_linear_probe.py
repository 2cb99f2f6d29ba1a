"""Linear probe: learns separable classes, stays near chance on noise labels, reproducible sweep."""

import torch

from viclip.eval.linear_probe import holdout_split, linear_probe


def _clusters(n_per_class: int, num_classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_linear_probe_separates_clusters_and_is_reproducible():
    train_x, train_y = _clusters(30, 6, 16, seed=0)
    val_x, val_y = _clusters(20, 6, 16, seed=1)
    out = linear_probe(train_x, train_y, val_x, val_y, 6, l2_grid=(1e-3, 10.0), max_iter=25)
    assert out["top1"] > 90 and out["top5"] == 100.0 and out["avg"] == (out["top1"] + out["top5"]) / 2
    assert set(out["sweep_top1"]) == {"0.001", "10"}
    assert out["sweep_top1"][f"{out['l2']:g}"] == max(out["sweep_top1"].values())  # the sweep's best
    again = linear_probe(train_x, train_y, val_x, val_y, 6, l2_grid=(1e-3, 10.0), max_iter=25)
    assert again == out


def test_linear_probe_is_near_chance_on_shuffled_labels():
    train_x, train_y = _clusters(30, 6, 16, seed=0)
    val_x, val_y = _clusters(30, 6, 16, seed=1)
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    out = linear_probe(train_x, shuffled, val_x, val_y, 6, l2_grid=(1e-3,), max_iter=25)
    assert out["top1"] < 40  # chance is 16.7 %


def test_holdout_split_partitions():
    fit_idx, hold_idx = holdout_split(50, 0.1, seed=3)
    assert len(hold_idx) == 5 and sorted(torch.cat([fit_idx, hold_idx]).tolist()) == list(range(50))
