"""One device rule for every command: evaluation, embeddings and captioning pick the same device."""

import torch

from viclip.curation.captioning import resolve_device
from viclip.distributed import pick_device


def test_auto_is_this_ranks_gpu_for_captioning_as_for_evaluation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == pick_device("cuda") == torch.device("cuda", 1)  # torchrun ranks: a GPU each
    assert resolve_device("auto", "auto") == (torch.device("cuda", 1), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert pick_device("cpu") == torch.device("cpu")
