"""The ViCLIP model: official names and shapes, masking, forward paths, tokenizer, FLOP formula."""

from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import viclip
from viclip.errors import ConfigError
from viclip.model import forward_flops, get_config
from viclip.model.vision import ResidualAttentionBlock, random_keep

KEYS_FILE = Path(__file__).parent / "data" / "official_viclip_keys.txt"


def official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#"):
            continue
        model, key, *shape = line.split(" ")
        if model == name:
            shapes[key] = tuple(int(s) for s in shape[0].split(",")) if shape and shape[0] else ()
    return shapes


@pytest.mark.parametrize("name,count,params", [("vit_l14", 447, 427_590_145), ("vit_b16", 303, 149_603_841)])
def test_state_dict_matches_official_checkpoint(name, count, params):
    with torch.device("meta"):  # no 1.7 GB allocation
        model = viclip.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_shapes(name)
    assert len(official) == count
    assert ours == official
    assert sum(v.numel() for v in model.state_dict().values()) == params


def test_masking_keeps_the_documented_number_of_tokens_per_sample():
    model = viclip.create_model("tiny", num_frames=4)  # 2 tubelets x 16 patches = 32 patch tokens
    seen = []
    model.vision_encoder.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    video = torch.randn(3, 4, 3, 32, 32)
    for ratio in (0.0, 0.5, 0.9):
        model(video, viclip.tokenize(["x"] * 3), mask_ratio=ratio)
        assert seen[-1] == (3, 32 - int(ratio * 32) + 1, 64)
    model.encode_video(video)
    assert seen[-1] == (3, 33, 64), "encode_video must never mask"


def test_random_masking_differs_per_sample_and_keeps_order():
    torch.manual_seed(0)
    kept = random_keep(8, 100, 0.75)
    assert kept.shape == (8, 25)
    assert (kept.diff(dim=1) > 0).all(), "kept tokens stay in their original order"
    assert len({tuple(row.tolist()) for row in kept}) == 8, "each sample keeps a different subset"


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = viclip.create_model("tiny", num_frames=4)
    video, tokens = torch.randn(2, 4, 3, 32, 32), viclip.tokenize(["a red circle", "a blue square"])

    def grads():
        model.zero_grad()
        v, t = model(video, tokens)
        (v.square().sum() + t.square().sum()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["official", "sample"])
def test_drop_path_modes_drop_token_positions_or_samples(mode):
    """official: the official blocks run sequence-first, so a token position is dropped for the whole batch;
    sample: whole samples, as timm's DropPath on batch-first tokens."""
    torch.manual_seed(0)
    block = ResidualAttentionBlock(4, 1, drop_path=0.5, drop_path_mode=mode).train()
    out = block.drop_path1(torch.ones(8, 64, 4))  # [B, L, C]
    assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / keep
    per_position = out.amax(dim=(0, 2)) == out.amin(dim=(0, 2))  # one value across the batch at each position
    per_sample = out.amax(dim=(1, 2)) == out.amin(dim=(1, 2))  # one value across each sample's tokens
    assert bool(per_position.all()) == (mode == "official") and bool(per_sample.all()) == (mode == "sample")

    model = viclip.create_model("tiny", num_frames=4, drop_path_rate=0.9, layers=4, drop_path_mode=mode)
    video = torch.randn(1, 4, 3, 32, 32).expand(16, -1, -1, -1, -1)
    out = model.train().encode_video(video)
    distinct = len({tuple(o.round(decimals=4).tolist()) for o in out})
    assert distinct == 1 if mode == "official" else distinct > 1, "identical inputs: one path per batch or per sample"
    out = model.eval().encode_video(video)
    torch.testing.assert_close(out, out[:1].expand_as(out))


def test_config_fields_are_checked_at_construction():
    for bad, match in (({"num_frames": 0}, r"ViCLIPConfig.num_frames must be an integer in \[1, 1024\], got 0"),
                       ({"num_frames": 10**12}, r"num_frames .* got 1000000000000"),
                       ({"width": 64.0}, r"ViCLIPConfig.width must be an integer .* got 64.0"),
                       ({"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
                       ({"drop_path_mode": "batch"}, r"drop_path_mode must be one of \('official', 'sample'\)"),
                       ({"heads": 3}, r"ViCLIPConfig.width=64 is not a multiple of heads=3"),
                       ({"mask_ratio": 0.5}, r"unknown ViCLIPConfig field\(s\) \['mask_ratio'\]")):
        with pytest.raises(ConfigError, match=match):
            viclip.create_model("tiny", **bad)

    from omegaconf import OmegaConf

    from viclip.train.trainer import build_train_model

    cfg = OmegaConf.create({"model": {"name": "tiny", "overrides": {"num_frames": 0}, "clip_weights": None}})
    with pytest.raises(ConfigError, match=r"^ViCLIPConfig.num_frames must be an integer in \[1, 1024\], got 0$"):
        build_train_model(cfg, is_main=False)  # model.overrides.num_frames=0 on the command line


def test_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = viclip.create_model("tiny", num_frames=4).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    ref = model.encode_video(video)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.encode_video(video)
    assert torch.nn.functional.cosine_similarity(ref, low.float()).min() > 0.99


def test_image_input_is_a_one_tubelet_clip():
    model = viclip.create_model("tiny").eval()
    image = torch.randn(2, 3, 32, 32)
    clip = image.unsqueeze(1).expand(-1, model.cfg.tubelet_size, -1, -1, -1)
    torch.testing.assert_close(model.encode_video(image), model.encode_video(clip))


def test_wrong_frame_count_names_the_mismatch():
    model = viclip.create_model("tiny")
    with pytest.raises(ValueError, match="temporal embedding for 8"):
        model.encode_video(torch.randn(1, 4, 3, 32, 32))


def test_unknown_model_and_field_are_named():
    with pytest.raises(ValueError, match="unknown model 'vit_h14'"):
        viclip.create_model("vit_h14")
    with pytest.raises(ValueError, match="widht"):
        viclip.create_model("tiny", widht=3)


def test_text_tower_is_frozen_as_in_the_official_recipe():
    with torch.device("meta"):
        model = viclip.create_model("vit_b16")
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.vision_encoder.parameters()) and model.temp.requires_grad
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)


def test_tokenize_matches_clip_ids_and_truncates_with_eot_last():
    tokens = viclip.tokenize("a photo of a cat", official_cleaning=False)
    # OpenAI CLIP BPE ids: <sot> a photo of a cat <eot>
    assert tokens[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokens.shape == (1, 32) and tokens[0, 7:].eq(0).all()
    long = viclip.tokenize(" ".join(["cat"] * 60))
    assert long[0, 0] == 49406 and long[0, -1] == 49407 and long[0, 1:-1].eq(2368).all()


def test_official_caption_cleaning():
    assert viclip.model.clean_caption("A man's  (dog) jumps -- over/the fence!") == "a mans dog jumps over the fence"
    cleaned = viclip.tokenize("A cat, jumping!")
    assert torch.equal(cleaned, viclip.tokenize("a cat jumping", official_cleaning=False))


def test_zero_shot_returns_probabilities():
    model = viclip.create_model("tiny").eval()
    probs = viclip.zero_shot(model, torch.randn(3, 8, 3, 32, 32), ["moving left", "moving right"], ["a video of {}"])
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_flop_formula_matches_the_counted_matmuls(mask_ratio):
    cfg = get_config("tiny", num_frames=4, image_size=64)
    model = viclip.model.ViCLIP(cfg)
    # The math SDPA backend runs attention as counted matmuls (fused CPU kernels are not counted).
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 4, 3, 64, 64), viclip.tokenize(["x"]), mask_ratio=mask_ratio)
    counted = counter.get_total_flops()
    assert abs(forward_flops(cfg, mask_ratio) - counted) / counted < 0.001


def test_zero_shot_tokenizes_at_the_model_context_length():
    model = viclip.create_model("tiny", context_length=16).eval()
    probs = viclip.zero_shot(model, torch.randn(2, 8, 3, 32, 32), ["left", "right", "up"])
    assert probs.shape == (2, 3)


def _official_text_positions(old: torch.Tensor, length: int) -> torch.Tensor:
    """The official interpolate_pos_embed_vit on text_encoder.positional_embedding, step by step from its source:
    [n, d] -> [1, n, 1, d] -> [1, d, n] -> F.interpolate(size=length, mode="linear") -> [length, d]."""
    seq = old.unsqueeze(0).unsqueeze(2).squeeze(2).permute(0, 2, 1)
    return torch.nn.functional.interpolate(seq, length, mode="linear").permute(0, 2, 1).squeeze(0)


def test_text_positions_interpolate_as_the_official_fine_tuning_loader():
    from viclip.model.text import extend_positional_embedding

    ramp = torch.arange(4.0).unsqueeze(1).expand(4, 3)
    grown = extend_positional_embedding(ramp, 8, "interpolate")
    torch.testing.assert_close(grown[:, 0], torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]))
    torch.manual_seed(0)
    table = torch.randn(32, 16)
    for length in (40, 64, 150):
        torch.testing.assert_close(extend_positional_embedding(table, length, "interpolate"),
                                   _official_text_positions(table, length), rtol=0, atol=1e-6)
