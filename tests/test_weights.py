"""Weights: safe loading, strict checks, export round trips, temporal resampling, CLIP initialisation
from state dicts, OpenAI TorchScript archives and open_clip pretrained tags.

No real weights are available offline: the CLIP reference is open_clip's own model with random
weights of the real architecture family (QuickGELU CLIP ViT), shrunk to test size; open_clip tags
resolve against a Hugging Face cache the tests lay out, in offline mode.
"""

import os
import pickle
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from tiny_model import outputs, tiny_model

import viclip
from viclip.model import CheckpointError, export_official, export_safetensors, init_from_clip, load_weights
from viclip.model.weights import (
    interpolate_temporal_embedding,
    load_checkpoint_file,
    read_config,
    resolve_clip_weights,
)
from viclip.testing.hub_cache import add_to_hub_cache, offline_hub


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.mark.parametrize("export,suffix", [(export_official, ".pth"), (export_safetensors, ".safetensors")])
def test_export_round_trip_gives_identicaloutputs(tmp_path, tiny, export, suffix):
    path = export(tiny, tmp_path / f"tiny{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"
    loaded = viclip.load_model(checkpoint=path)  # size read from the file
    assert loaded.cfg == tiny.cfg
    for a, b in zip(outputs(tiny), outputs(loaded)):
        assert torch.equal(a, b)


def test_official_layout_and_deepspeed_wrappers_load(tmp_path, tiny):
    sd = tiny.state_dict()
    torch.save({"module": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ds.pth")
    assert torch.load(tmp_path / "ds.pth", weights_only=True)["module"].keys()
    for k, v in load_checkpoint_file(tmp_path / "ds.pth").items():
        assert torch.equal(v, sd[k])
    exported = torch.load(export_official(tiny, tmp_path / "official.pth"), weights_only=True)
    assert set(exported["model"]) == set(sd)


def test_truncated_file_is_reported(tmp_path, tiny):
    for export, name in ((export_official, "a.pth"), (export_safetensors, "a.safetensors")):
        path = export(tiny, tmp_path / name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint_file(path)


def test_foreign_state_dict_lists_every_problem(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    del sd["vision_encoder.ln_post.bias"]
    sd["head.weight"] = torch.zeros(3)
    sd["vision_encoder.proj"] = torch.zeros(64, 32)
    torch.save({"model": sd}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(viclip.create_model("tiny"), tmp_path / "foreign.pth")
    message = str(err.value)
    assert "foreign.pth" in message
    assert "missing (1): vision_encoder.ln_post.bias" in message
    assert "unexpected (1): head.weight" in message
    assert "vision_encoder.proj: file (64, 32) vs model (64, 64)" in message


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"temp": _Payload()}}, f)
    with pytest.raises(CheckpointError, match="refused"):
        viclip.load_model("tiny", checkpoint=path)
    assert not _Payload.marker.exists()


def test_temporal_embedding_is_resampled_for_other_frame_counts(tmp_path, tiny):
    ramp = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 3)
    torch.testing.assert_close(interpolate_temporal_embedding(ramp, 4)[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    path = export_official(tiny, tmp_path / "tiny.pth")
    longer = viclip.load_model(checkpoint=path, num_frames=16)
    assert longer.vision_encoder.temporal_positional_embedding.shape == (1, 8, 64)  # 16 frames / tubelet 2
    longer.encode_video(torch.randn(1, 16, 3, 32, 32))


def test_config_is_inferred_from_tensors_without_metadata(tmp_path, tiny):
    torch.save({"model": tiny.state_dict()}, tmp_path / "bare.pth")
    assert read_config(tmp_path / "bare.pth") == tiny.cfg


def _open_clip_model():
    """A QuickGELU CLIP with the ViT layout of ViT-B/16 and ViT-L/14, at test size."""
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=4, layers=2)
    return open_clip.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


@pytest.mark.parametrize("tubelet_size", [1, 2])
def test_clip_init_reproduces_open_clip_embeddings(tmp_path, tubelet_size):
    clip = _open_clip_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "clip.pt")
    model = viclip.create_model("tiny", tubelet_size=tubelet_size).eval()
    report = init_from_clip(model, tmp_path / "clip.pt")

    assert report.inflated == ["vision_encoder.conv1.weight"]
    assert report.resized == ["text_encoder.positional_embedding"]
    assert report.converted == ["logit_scale"] and report.new == ["vision_encoder.temporal_positional_embedding"]
    assert not report.unused
    assert model.vision_encoder.temporal_positional_embedding.eq(0).all()
    torch.testing.assert_close(model.temp, (-clip.logit_scale.detach()).exp().clamp(min=0.01))

    image = torch.randn(3, 3, 32, 32)
    one_frame = image.unsqueeze(1).expand(-1, tubelet_size, -1, -1, -1)  # one tubelet of the image
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(one_frame), clip.encode_image(image), atol=1e-5, rtol=1e-4)
        texts = ["a red circle moving to the left", "someone is playing the violin on a stage"]
        tokens77 = open_clip.tokenize(texts)  # open_clip pads to 77; ours to 32, same ids
        tokens32 = viclip.tokenize(texts, official_cleaning=False)
        assert torch.equal(tokens77[:, :32], tokens32)
        torch.testing.assert_close(model.encode_text(tokens32), clip.encode_text(tokens77), atol=1e-5, rtol=1e-4)


def test_clip_init_refuses_a_clip_of_another_size(tmp_path):
    torch.save(_open_clip_model().state_dict(), tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="visual.class_embedding"):
        init_from_clip(viclip.create_model("tiny", width=128, heads=4), tmp_path / "clip.pt")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=str(Path(tmp_path / "nope.pth"))):
        viclip.load_model("tiny", checkpoint=tmp_path / "nope.pth")


def test_convert_checkpoint_tool_round_trip(tmp_path, tiny, monkeypatch):
    import sys

    from viclip.commands.convert import main  # tools/convert_checkpoint.py runs it (a subprocess in test_hub.py)

    src = export_official(tiny, tmp_path / "tiny.pth")
    monkeypatch.setattr(sys, "argv", ["viclip-convert", "--input", str(src), "--out", f"{tmp_path}/tiny.safetensors"])
    main()
    converted = viclip.load_model(checkpoint=tmp_path / "tiny.safetensors")
    for a, b in zip(outputs(tiny), outputs(converted)):
        assert torch.equal(a, b)


def _traced_openai_clip(path: Path) -> torch.nn.Module:
    """An OpenAI-style TorchScript CLIP archive (as ``ViT-L-14.pt``) of the test-size CLIP: traced, with an
    ``input_resolution`` entry as OpenAI's archives keep beside the weights."""
    import warnings

    clip = _open_clip_model()
    clip.register_buffer("input_resolution", torch.tensor(32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(clip, (torch.randn(1, 3, 32, 32), open_clip.tokenize(["a"])), strict=False,
                                 check_trace=False)
    traced.save(str(path))
    return clip


def test_openai_torchscript_archive_initialises_viclip(tmp_path):
    clip = _traced_openai_clip(tmp_path / "ViT-T-8.pt")
    model = viclip.create_model("tiny", tubelet_size=1).eval()
    report = init_from_clip(model, tmp_path / "ViT-T-8.pt")
    assert report.unused == ["attn_mask"]  # the traced causal mask; input_resolution is dropped
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(image.unsqueeze(1)), clip.encode_image(image), atol=1e-5,
                                   rtol=1e-4)
    archive = (tmp_path / "ViT-T-8.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        init_from_clip(model, tmp_path / "cut.pt")


def _laid_out_open_clip_cache(cache: Path, repo_id: str, state_dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, cache / "weights.safetensors")
    commit = add_to_hub_cache(cache, repo_id, {"open_clip_model.safetensors": cache / "weights.safetensors"})
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit / "open_clip_model.safetensors"


def test_open_clip_tags_resolve_through_its_registry_and_the_hub_cache(tmp_path, monkeypatch):
    """The real registry entries of ViT-L-14 (openai, laion2b_s32b_b82k) against a cache the test fills."""
    offline_hub(monkeypatch, tmp_path)
    weights = {"logit_scale": torch.tensor(4.0)}  # resolution reads no tensors: any file stands in for the weights
    openai = _laid_out_open_clip_cache(tmp_path, "timm/vit_large_patch14_clip_224.openai", weights)
    assert resolve_clip_weights("openai", "vit_l14") == openai
    laion = _laid_out_open_clip_cache(tmp_path, "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", weights)
    with pytest.warns(UserWarning, match="trained with GELU"):
        assert resolve_clip_weights("laion2b_s32b_b82k", "vit_l14") == laion
    with pytest.raises(CheckpointError, match=r"not an open_clip pretrained tag of ViT-L-14 \(tags: openai, "):
        resolve_clip_weights("openia", "vit_l14")
    with pytest.raises(CheckpointError, match="open_clip tags are known only for vit_l14 .* not tiny: give a file"):
        resolve_clip_weights("openai", "tiny")


def test_uncached_open_clip_tag_names_the_cache_path(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "empty")
    with pytest.raises(CheckpointError) as err:
        init_from_clip(viclip.create_model("tiny"), "openai", cache_dir=tmp_path / "cache")  # tiny: no open_clip arch
    assert "not tiny" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        resolve_clip_weights("openai", "vit_b16")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"CLIP weights ViT-B-16/openai are not in the cache "
                              f"{tmp_path / 'empty' / 'models--timm--vit_base_patch16_clip_224.openai'} ")
    assert "HF_HUB_CACHE" in message and "file path" in message


def test_clip_init_by_tag_end_to_end(tmp_path, monkeypatch):
    """init_from_clip(model, 'openai') as training calls it, on a test-size architecture registered for the test
    (no open_clip architecture is this small): the tag's weights come from the laid-out cache."""
    import open_clip.pretrained

    from viclip.model import weights

    monkeypatch.setitem(weights.CLIP_ARCHITECTURES, "tiny", "viclip-test-tiny-clip")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "viclip-test-tiny-clip",
                        {"openai": {"hf_hub": "viclip-test/tiny-clip/", "quick_gelu": True}})
    offline_hub(monkeypatch, tmp_path)
    clip = _open_clip_model()
    _laid_out_open_clip_cache(tmp_path, "viclip-test/tiny-clip", clip.state_dict())
    by_tag, by_file = viclip.create_model("tiny"), viclip.create_model("tiny")
    init_from_clip(by_tag, "openai")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    init_from_clip(by_file, tmp_path / "clip.pt")
    for (name, a), b in zip(by_tag.state_dict().items(), by_file.state_dict().values()):
        if "temporal" not in name:  # left at its (random) initialisation in both
            assert torch.equal(a, b), name

    from omegaconf import OmegaConf

    from viclip.train.trainer import build_train_model

    cfg = OmegaConf.create({"model": {"name": "tiny", "overrides": {}, "clip_weights": "openai"}})
    trained = build_train_model(cfg, is_main=False)  # model.clip_weights=openai, as train.py takes it
    assert torch.equal(trained.vision_encoder.proj, by_file.vision_encoder.proj)
    cfg.model.clip_weights = "laion2b_s34b_b88k"  # a tag the test's architecture lacks
    with pytest.raises(CheckpointError, match="^model.clip_weights=laion2b_s34b_b88k: CLIP weights"):
        build_train_model(cfg, is_main=False)
