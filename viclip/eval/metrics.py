"""Ranking metrics on score matrices: retrieval recall@K / median / mean rank and top-K accuracy.

Ties are broken against the model: a correct item's rank counts every incorrect item whose score
is greater than *or equal to* it. A constant scorer therefore gets the worst rank rather than the
best, and the result never depends on sort stability or on the order of the gallery. NaN or infinite
scores raise (a NaN compares false with everything, so it would otherwise rank first). Ranks are
1-based (rank 1 = retrieved first), as in the tables of the retrieval literature.
"""

from __future__ import annotations

import torch

RECALL_KS = (1, 5, 10)


def ranks_from_mask(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """1-based rank of the best-ranked positive of each query.

    ``scores [Q, G]`` (higher is better), ``positives [Q, G]`` bool. A query with several positives
    (a video with several captions) is ranked by its best-scored positive; the other positives never
    count as competitors. Processed in row chunks so a 27k-caption gallery stays small in memory.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape")
    if not torch.isfinite(scores).all():  # no comparison with NaN is true: a NaN scorer would rank first
        raise ValueError(f"{int((~torch.isfinite(scores)).sum())} scores are NaN or infinite; "
                         "ranks of non-finite scores are meaningless")
    empty = ~positives.any(dim=1)
    if empty.any():
        raise ValueError(f"{int(empty.sum())} queries have no positive (first: row {int(empty.nonzero()[0])})")
    out = []
    for start in range(0, scores.shape[0], chunk):
        s, pos = scores[start : start + chunk].float(), positives[start : start + chunk]
        best = s.masked_fill(~pos, float("-inf")).max(dim=1, keepdim=True).values
        out.append(1 + ((s >= best) & ~pos).sum(dim=1))
    return torch.cat(out)


def rank_summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """R@1/5/10 in percent, median rank (mean of the two middle ranks for an even count) and mean rank."""
    r = ranks.double()
    out = {f"{prefix}_r{k}": 100.0 * float((r <= k).double().mean()) for k in RECALL_KS}
    out[f"{prefix}_medr"] = float(r.quantile(0.5))
    out[f"{prefix}_meanr"] = float(r.mean())
    return out


def retrieval_metrics(
    t2v_scores: torch.Tensor, v2t_scores: torch.Tensor, text_to_video: torch.Tensor
) -> dict[str, float]:
    """Text-to-video and video-to-text metrics.

    ``t2v_scores [T, V]`` ranks videos for each text, ``v2t_scores [V, T]`` ranks texts for each
    video (the two differ only under dual-softmax re-scoring), ``text_to_video [T]`` is the index
    of each text's video. Every text has exactly one video; a video may have several texts and is
    credited with its best-ranked one.
    """
    num_texts, num_videos = t2v_scores.shape
    if v2t_scores.shape != (num_videos, num_texts):
        raise ValueError(f"v2t_scores must be [{num_videos}, {num_texts}], got {tuple(v2t_scores.shape)}")
    if text_to_video.shape != (num_texts,):
        raise ValueError(f"text_to_video must have {num_texts} entries, got {tuple(text_to_video.shape)}")
    t2v_pos = text_to_video[:, None] == torch.arange(num_videos)[None, :]
    return {
        **rank_summary(ranks_from_mask(t2v_scores, t2v_pos), "t2v"),
        **rank_summary(ranks_from_mask(v2t_scores, t2v_pos.T), "v2t"),
    }


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy in percent (ties against the model), plus ``avg``: the mean of top-1 and top-5
    that the paper reports as AVG (following CLIP and EVA-CLIP)."""
    positives = labels[:, None] == torch.arange(scores.shape[1])[None, :]
    ranks = ranks_from_mask(scores, positives)
    out = {f"top{k}": 100.0 * float((ranks <= k).double().mean()) for k in ks}
    if 1 in ks and 5 in ks:
        out["avg"] = (out["top1"] + out["top5"]) / 2
    return out
