"""A tiny random-weight ViCLIP and its outputs on fixed inputs, shared by the weight round-trip tests."""

import torch

import viclip
from viclip.model import ViCLIP


def tiny_model() -> ViCLIP:
    torch.manual_seed(0)
    model = viclip.create_model("tiny")
    with torch.no_grad():  # non-zero temporal embedding so that round trips test it too
        model.vision_encoder.temporal_positional_embedding.normal_()
    return model.eval()


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and text embeddings of one fixed clip batch and two captions."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, model.cfg.num_frames, 3, 32, 32, generator=g)
    return model.encode_video(video), model.encode_text(viclip.tokenize(["a red circle moving left", "a cat"]))
