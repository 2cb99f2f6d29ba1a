"""Token features (``ViCLIP.forward_features``) on random weights of the real architecture (tiny config)."""

import re
from pathlib import Path

import pytest
import torch

import viclip

DOC = Path(__file__).parents[1] / "docs" / "backbone.md"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return viclip.create_model("tiny").eval()


def test_class_token_gives_exactly_encode_videos_embedding(model):
    cfg = model.cfg
    video = torch.randn(3, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        pooled = model.encode_video(video)
        feats = model.forward_features(video)
        raw = model.forward_features(video, ln_post=False)
    proj = model.vision_encoder.proj
    assert torch.equal(feats.embedding, pooled)
    assert torch.equal(feats.class_token @ proj, pooled)
    assert torch.equal(model.vision_encoder.ln_post(raw.class_token) @ proj, pooled)
    assert torch.equal(raw.embedding, pooled)


def test_patch_tokens_have_the_frame_patch_layout(model):
    cfg = model.cfg
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        feats = model.forward_features(video)
        raw = model.forward_features(video, ln_post=False)
    t, n = cfg.num_frames // cfg.tubelet_size, (cfg.image_size // cfg.patch_size) ** 2
    assert feats.patch_tokens.shape == (2, t, n, cfg.width)
    assert feats.class_token.shape == (2, cfg.width)
    # ln_post is per token: the normed tokens are the raw ones through ln_post, position by position
    assert torch.allclose(model.vision_encoder.ln_post(raw.patch_tokens), feats.patch_tokens)
    assert not torch.allclose(raw.patch_tokens, feats.patch_tokens)
    # a change to one frame moves that frame's tokens (joint attention moves the others less, but they differ too)
    edited = video.clone()
    edited[:, : cfg.tubelet_size] += 1.0
    with torch.no_grad():
        moved = model.forward_features(edited).patch_tokens
    assert not torch.allclose(moved[:, 0], feats.patch_tokens[:, 0])


def test_never_masked(model):
    """Masking is an argument of the vision tower's training forward (the phase's mask_ratio), not of the
    config (ViCLIPConfig has no mask_ratio): features always hold every patch token, deterministically."""
    cfg = model.cfg
    video = torch.randn(1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        a, b = model.forward_features(video), model.forward_features(video)
    assert torch.equal(a.patch_tokens, b.patch_tokens)  # no random token choice
    assert a.patch_tokens.shape[1:3] == (cfg.num_frames // cfg.tubelet_size, (cfg.image_size // cfg.patch_size) ** 2)


def test_the_documented_connector_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, f"no python example in {DOC}"
    exec(compile(blocks[0], str(DOC), "exec"), {})  # noqa: S102 - the doc's example; its asserts check the shapes
