"""Weights: safe loading, strict checks, export round trips, temporal resampling, CLIP initialisation.

No real weights are available offline: the CLIP reference is open_clip's own model with random
weights of the real architecture family (QuickGELU CLIP ViT), shrunk to test size.
"""

import os
import pickle
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import viclip
from viclip.model import CheckpointError, export_official, export_safetensors, init_from_clip, load_weights
from viclip.model.weights import interpolate_temporal_embedding, load_checkpoint_file, read_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = viclip.create_model("tiny")
    with torch.no_grad():  # non-zero temporal embedding so that round trips test it too
        model.vision_encoder.temporal_positional_embedding.normal_()
    return model.eval()


def _outputs(model):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, model.cfg.num_frames, 3, 32, 32, generator=g)
    return model.encode_video(video), model.encode_text(viclip.tokenize(["a red circle moving left", "a cat"]))


@pytest.mark.parametrize("export,suffix", [(export_official, ".pth"), (export_safetensors, ".safetensors")])
def test_export_round_trip_gives_identical_outputs(tmp_path, tiny, export, suffix):
    path = export(tiny, tmp_path / f"tiny{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"
    loaded = viclip.load_model(checkpoint=path)  # size read from the file
    assert loaded.cfg == tiny.cfg
    for a, b in zip(_outputs(tiny), _outputs(loaded)):
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


def test_convert_checkpoint_tool_round_trip(tmp_path, tiny):
    import subprocess
    import sys

    tool = Path(__file__).parents[1] / "tools" / "convert_checkpoint.py"
    src = export_official(tiny, tmp_path / "tiny.pth")
    subprocess.run([sys.executable, tool, src, tmp_path / "tiny.safetensors"], check=True, capture_output=True)
    converted = viclip.load_model(checkpoint=tmp_path / "tiny.safetensors")
    for a, b in zip(_outputs(tiny), _outputs(converted)):
        assert torch.equal(a, b)
