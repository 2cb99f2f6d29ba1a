"""Optional re-scoring of query-gallery logits: dual softmax (DSL, Cheng et al. 2021)."""

from __future__ import annotations

import torch


def dual_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Re-score ``logits [Q, G]`` (query rows, ranked over the gallery columns) by multiplying each
    entry by the softmax over all *queries* for that gallery item.

    A gallery item that is close to every query (a hub) gets a flat prior and sinks. As in the
    official UMT/ViCLIP retrieval evaluation, the input is cosine / temp and the prior uses every
    query of the test set at once, so the result is transductive: it is an option named in the
    results, never the default.
    """
    logits = logits.float()
    return logits * logits.softmax(dim=0)
