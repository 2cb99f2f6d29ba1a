"""AdamW groups (frozen text tower left out, no decay where CLIP has none), the schedule, the FLOP count."""

from __future__ import annotations

import itertools

import pytest

import viclip
from viclip.model import forward_flops, get_config
from viclip.train.meters import ThroughputMeter, train_flops_per_clip
from viclip.train.optim import WarmupCosine, build_optimizer, param_groups


def test_groups_leave_frozen_text_out_and_skip_decay_on_vectors_and_embeddings():
    model = viclip.create_model("tiny", freeze_text=True)
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.2)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert not any(n.startswith("text_encoder.") for n in decay | no_decay)
    assert {"temp", "vision_encoder.positional_embedding", "vision_encoder.class_embedding"} <= no_decay
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)
    assert any(n.endswith(".bias") for n in no_decay) and any("ln" in n for n in no_decay)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0.0

    opt = build_optimizer(param_groups(model, weight_decay=0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
    model(*_tiny_batch(model)).__getitem__(0).sum().backward()
    opt.step()
    stateful = {names[id(p)] for p in opt.state}
    assert stateful and not any(n.startswith("text_encoder.") for n in stateful)


def _tiny_batch(model):
    import torch

    c = model.cfg
    return torch.randn(2, c.num_frames, 3, c.image_size, c.image_size), torch.randint(0, 100, (2, c.context_length))


def test_warmup_then_cosine_to_floor():
    s = WarmupCosine(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.01)
    assert s(0) == pytest.approx(0.1)
    assert s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s(110) == pytest.approx(0.01)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, total_steps=5, warmup_steps=6)


def test_masking_cuts_vision_flops_and_frozen_text_costs_forward_only():
    cfg = get_config("vit_l14")
    unmasked, masked = train_flops_per_clip(cfg, 0.0), train_flops_per_clip(cfg, 0.9)
    assert masked < unmasked / 5
    # ViT-L/14 at 8x224^2: 2049 tokens, 24 x (24 n w^2 + 4 n^2 w) ~ 1.65 TFLOPs forward
    vision_fwd = forward_flops(cfg, 0.0, text=False)
    assert 1.6e12 < vision_fwd < 1.7e12
    text = forward_flops(cfg, 0.0) - vision_fwd
    assert unmasked == pytest.approx(3 * vision_fwd + text)
    import dataclasses

    trained_text = dataclasses.replace(cfg, freeze_text=False)
    assert train_flops_per_clip(trained_text, 0.0) == pytest.approx(3 * vision_fwd + 3 * text)


def test_throughput_meter_splits_data_wait(monkeypatch):
    clock = iter([0.0, 0.0, 0.5, 2.0, 2.0, 2.5, 4.0])  # init, then start/data_ready/end x2
    monkeypatch.setattr("viclip.train.meters.time.perf_counter", lambda: next(clock))
    m = ThroughputMeter()
    for _ in range(2):
        m.start()
        m.data_ready()
        m.end(clips=8)
    assert m.clips_per_s() == pytest.approx(16 / 4.0)
    assert m.data_wait_share() == pytest.approx(1.0 / 4.0)
    assert m.mfu(1e9, None) is None and m.mfu(1e9, 4e9) == pytest.approx(1.0)
