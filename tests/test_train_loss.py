"""ClipLoss: 2 gloo ranks equal one process on the concatenated batch; same_video masks exactly its pairs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from viclip.train.loss import ClipLoss

B_LOCAL, DIM, WORLD = 4, 8, 2


def make_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(n, DIM, generator=g),
        "text": torch.randn(n, DIM, generator=g),
        # rows 0/5 share a sample index (across ranks); rows 1/2 and 3/6 share a source video
        "index": torch.tensor([10, 11, 12, 13, 14, 10, 16, 17]),
        "video_id": torch.tensor([100, 101, 101, 103, 104, 100, 103, 107]),
    }


def single_process(local_loss: bool, same_video: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    b = make_batch(B_LOCAL * WORLD)
    v, t = b["video"].requires_grad_(), b["text"].requires_grad_()
    temp = torch.tensor(0.05)
    loss = ClipLoss(local_loss, same_video)(v, t, temp, b["index"], b["video_id"])
    loss.backward()
    return loss.item(), v.grad, t.grad


def _rank_main(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for local_loss, same_video in itertools.product([True, False], ["negative", "ignore", "positive"]):
        b = make_batch(B_LOCAL * WORLD)
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        v, t = b["video"][sl].clone().requires_grad_(), b["text"][sl].clone().requires_grad_()
        loss = ClipLoss(local_loss, same_video, rank, WORLD)(v, t, torch.tensor(0.05), b["index"][sl],
                                                            b["video_id"][sl])
        loss.backward()
        results[(local_loss, same_video)] = (loss.item(), v.grad, t.grad)
    torch.save(results, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_single_process(tmp_path):
    out = str(tmp_path / "res")
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for (local_loss, same_video) in ranks[0]:
        ref_loss, ref_gv, ref_gt = single_process(local_loss, same_video)
        losses = [ranks[r][(local_loss, same_video)][0] for r in range(WORLD)]
        if local_loss:  # each rank holds its rows' share: the mean over ranks is the loss
            assert sum(losses) / WORLD == pytest.approx(ref_loss, rel=1e-5)
            assert losses[0] != pytest.approx(losses[1], rel=1e-3)  # really rank-local
        else:
            assert losses == pytest.approx([ref_loss] * WORLD, rel=1e-5)
        for r in range(WORLD):
            sl = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
            _, gv, gt = ranks[r][(local_loss, same_video)]
            # documented world-size factor: data-parallel gradient averaging divides it out
            torch.testing.assert_close(gv, WORLD * ref_gv[sl], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gt, WORLD * ref_gt[sl], rtol=1e-4, atol=1e-6)


def naive_loss(v, t, temp, index, video_id, same_video):
    """Loop-by-loop symmetric InfoNCE, written independently of the module."""
    v = torch.nn.functional.normalize(v, dim=-1)
    t = torch.nn.functional.normalize(t, dim=-1)
    n = len(v)

    def relation(i, j):
        if index[i] == index[j]:
            return "pos"
        if video_id[i] == video_id[j]:
            return {"negative": "neg", "ignore": "skip", "positive": "pos"}[same_video]
        return "neg"

    total = 0.0
    for a, b in ((v, t), (t, v)):
        for i in range(n):
            kept = [j for j in range(n) if relation(i, j) != "skip"]
            log_z = math.log(sum(math.exp(float(a[i] @ b[j]) / temp) for j in kept))
            pos = [j for j in kept if relation(i, j) == "pos"]
            total += -sum(float(a[i] @ b[j]) / temp - log_z for j in pos) / len(pos) / n
    return total / 2


@pytest.mark.parametrize("same_video", ["negative", "ignore", "positive"])
def test_same_video_masks_exactly_those_pairs(same_video):
    b = make_batch(8, seed=3)
    got = ClipLoss(same_video=same_video)(b["video"], b["text"], torch.tensor(0.1), b["index"], b["video_id"])
    want = naive_loss(b["video"], b["text"], 0.1, b["index"], b["video_id"], same_video)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_same_video_modes_differ_and_plain_infonce_without_index():
    b = make_batch(8, seed=4)
    losses = {m: ClipLoss(same_video=m)(b["video"], b["text"], torch.tensor(0.1), b["index"], b["video_id"]).item()
              for m in ("negative", "ignore", "positive")}
    assert len({round(x, 6) for x in losses.values()}) == 3
    # no index, no same_video: open_clip's arange-label cross-entropy
    v = torch.nn.functional.normalize(b["video"], dim=-1)
    t = torch.nn.functional.normalize(b["text"], dim=-1)
    logits = v @ t.T / 0.1
    labels = torch.arange(8)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    got = ClipLoss()(b["video"], b["text"], torch.tensor(0.1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_temp_is_floored_and_bad_option_named():
    b = make_batch(8)
    at_floor = ClipLoss()(b["video"], b["text"], torch.tensor(0.01))
    below = ClipLoss()(b["video"], b["text"], torch.tensor(0.001))
    assert below.item() == pytest.approx(at_floor.item())
    with pytest.raises(ValueError, match="same_video"):
        ClipLoss(same_video="drop")
    with pytest.raises(ValueError, match="video_id"):
        ClipLoss(same_video="ignore")(b["video"], b["text"], torch.tensor(0.1))
