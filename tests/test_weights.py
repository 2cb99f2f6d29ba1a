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
from viclip.errors import DataError, UnsafeFileError
from viclip.model import CheckpointError, export_official, export_safetensors, init_from_clip, load_weights
from viclip.model.weights import (
    fit_temporal_embedding,
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
    with pytest.raises(UnsafeFileError, match="refused"):
        viclip.load_model("tiny", checkpoint=path)
    assert not _Payload.marker.exists()


def test_temporal_embedding_is_fitted_to_other_frame_counts_as_the_official_loader(tmp_path, tiny):
    ramp = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 3)
    # fewer frames keep the first rows (load_temp_embed_with_mismatch truncates), more are interpolated
    torch.testing.assert_close(fit_temporal_embedding(ramp, 4)[0, :, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    longer = fit_temporal_embedding(ramp, 16)[0, :, 0]
    assert longer.shape == (16,) and longer[0] == 0 and longer[-1] == 7 and bool((longer.diff() >= 0).all())
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
    read = load_checkpoint_file(tmp_path / "ViT-T-8.pt")  # as data: the zip's data.pkl and data/ records
    expected = {k: v for k, v in clip.state_dict().items() if k != "input_resolution"}  # dropped, as OpenAI's loader
    expected["attn_mask"] = clip.attn_mask  # a non-persistent buffer, yet an attribute of the archive
    assert set(read) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(read[name], tensor), name
    model = viclip.create_model("tiny", tubelet_size=1).eval()
    report = init_from_clip(model, tmp_path / "ViT-T-8.pt")
    assert report.unused == ["attn_mask"]  # the traced causal mask
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(image.unsqueeze(1)), clip.encode_image(image), atol=1e-5,
                                   rtol=1e-4)
    archive = (tmp_path / "ViT-T-8.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        init_from_clip(model, tmp_path / "cut.pt")


class _WritesOnLoad(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` creates the file named in its state when the archive loads."""

    def __init__(self, marker: str, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.marker = marker
        self.temp = torch.nn.Parameter(weights["temp"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.temp

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return self.temp, self.marker, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.temp, self.marker, self.training = state[0], state[1], state[2]
        created = torch.from_file(self.marker, shared=True, size=1, dtype=torch.uint8)  # opens with O_CREAT
        self.temp = self.temp + created.sum().to(self.temp.dtype)


def _code_running_archive(tmp_path: Path) -> tuple[Path, Path]:
    """A TorchScript archive that writes a marker file when ``torch.jit.load`` reads it (checked here)."""
    import warnings

    probe, marker = tmp_path / "probe_marker", tmp_path / "marker"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_WritesOnLoad(str(probe), {"temp": torch.tensor(0.07)})).save(str(tmp_path / "probe.pt"))
        torch.jit.load(str(tmp_path / "probe.pt"))  # the test's own trusted load: the payload really runs
        assert probe.exists(), "the planted archive must run code under torch.jit.load, or this test proves nothing"
        torch.jit.script(_WritesOnLoad(str(marker), {"temp": torch.tensor(0.07)})).save(str(tmp_path / "evil.pt"))
    return tmp_path / "evil.pt", marker


def test_code_running_torchscript_is_refused_not_run(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from viclip.eval.model_loading import resolve_checkpoint, wise_ft
    from viclip.train.trainer import build_train_model

    evil, marker = _code_running_archive(tmp_path)
    train_cfg = OmegaConf.create({"model": {"name": "tiny", "overrides": {}, "clip_weights": str(evil)}})
    for load in (lambda: viclip.load_model(checkpoint=resolve_checkpoint(evil)),  # eval's checkpoint=, embed_clips
                 lambda: init_from_clip(viclip.create_model("tiny"), evil),  # CLIP start weights
                 lambda: build_train_model(train_cfg, is_main=False),  # model.clip_weights= of a training run
                 lambda: wise_ft(viclip.create_model("tiny"), evil, 0.5),  # eval's wise_ft.clip=
                 lambda: load_checkpoint_file(evil)):
        with pytest.raises(UnsafeFileError, match=r"evil.pt: refused: its TorchScript defines __setstate__"):
            load()
    assert not marker.exists()

    import zipfile

    with zipfile.ZipFile(evil) as src, zipfile.ZipFile(tmp_path / "no_code.pt", "w") as dst:  # the code hidden
        for name in src.namelist():
            if "/code/" not in name:
                dst.writestr(name, src.read(name))
    with pytest.raises(UnsafeFileError, match=r"no_code.pt: refused: __torch__\.\S*_WritesOnLoad keeps a custom state"):
        load_checkpoint_file(tmp_path / "no_code.pt")
    assert not marker.exists()

    import sys

    from viclip.commands.convert import main

    for argv in (["--input", str(evil)], ["--input", str(evil), "--from-clip", "--model", "tiny"]):
        monkeypatch.setattr(sys, "argv", ["viclip-convert", *argv, "--out", str(tmp_path / "out.pth")])
        with pytest.raises(SystemExit) as exit_:
            main()
        line = str(exit_.value.code)  # one_line_errors exits with "viclip-convert: error: MESSAGE"
        assert "\n" not in line and "refused" in line and "evil.pt" in line, line
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_torchscript_reader_refuses_foreign_globals(tmp_path):
    """The unpickler resolves only tensor rebuilds and containers: a data.pkl naming os.system is refused."""
    import zipfile

    archive = tmp_path / "odd.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("odd/data.pkl", pickle.dumps(_Payload(), protocol=2))
        z.writestr("odd/constants.pkl", pickle.dumps((), protocol=2))
    _Payload.marker = tmp_path / "pwned"
    with pytest.raises(UnsafeFileError, match=r"odd.pt: refused: its data.pkl names (posix|os|nt)\.system"):
        load_checkpoint_file(archive)
    assert not _Payload.marker.exists()


def test_integer_weights_are_refused_not_cast(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    sd["vision_encoder.proj"] = sd["vision_encoder.proj"].to(torch.int8)
    torch.save({"model": sd}, tmp_path / "int8.pth")
    with pytest.raises(DataError, match=r"int8.pth: tensors that are not floating point .*: "
                                        r"vision_encoder.proj \(torch.int8\)"):
        viclip.load_model(checkpoint=tmp_path / "int8.pth")


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
