"""Weights by name: pretrained folders (save_pretrained), hf-hub: names through a hub cache the test
lays out (offline: HF_HUB_OFFLINE=1), push_to_hub, and the convert tool. Tiny random-weight ViCLIPs
of the real architecture; nothing is downloaded."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_model import outputs, tiny_model

import viclip
from viclip.errors import ConfigError
from viclip.model import CheckpointError
from viclip.model.hub import convert_weights, resolve_pretrained
from viclip.model.weights import read_config
from viclip.testing.hub_cache import add_to_hub_cache, offline_hub

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _assert_same(a, b):
    assert a.cfg == b.cfg
    for x, y in zip(outputs(a), outputs(b)):
        assert torch.equal(x, y)


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny):
    """An offline hub cache holding tiny as hf-hub:viclip-test/tiny; returns (cache, commit)."""
    cache = tmp_path / "hub"
    folder = tiny.save_pretrained(tmp_path / "upload")
    files = {name: folder / name for name in ("config.json", "model.safetensors")}
    commit = add_to_hub_cache(cache, "viclip-test/tiny", files)
    offline_hub(monkeypatch, cache)
    return cache, commit


def test_save_pretrained_writes_the_folder_and_loads_back(tmp_path, tiny):
    folder = tiny.save_pretrained(tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"], "no temporary files left"
    config = json.loads((folder / "config.json").read_text())
    assert config == {"model_name": "tiny", **dataclasses.asdict(tiny.cfg)}
    _assert_same(tiny, viclip.load_model(checkpoint=folder))
    _assert_same(tiny, viclip.load_model(checkpoint=folder / "model.safetensors"))  # the file alone names it too


def test_config_json_decides_what_tensor_shapes_cannot(tmp_path):
    """heads are not in any tensor shape: a folder whose safetensors has no metadata still loads right."""
    torch.manual_seed(0)
    model = viclip.create_model("tiny", heads=2).eval()  # tiny's geometry, so inference alone would say 4 heads
    folder = model.save_pretrained(tmp_path / "two_heads")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    loaded = viclip.load_model(checkpoint=folder)
    assert loaded.cfg.heads == 2
    _assert_same(model, loaded)


def test_bad_config_json_names_the_file_and_field(tmp_path, tiny):
    folder = tiny.save_pretrained(tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["CLIPModel"]}))
    with pytest.raises(CheckpointError, match=r"config\.json: not a ViCLIP config \(unknown fields: architectures\)"):
        viclip.load_model(checkpoint=folder)
    (folder / "config.json").write_text(json.dumps({**config, "width": "64"}))
    with pytest.raises(CheckpointError, match=r"config\.json: ViCLIPConfig.width must be an integer in \[1, 16384\], "
                                              r"got '64'"):
        read_config(folder / "config.json")
    (folder / "config.json").write_text(json.dumps({**config, "num_frames": 1e12}))
    with pytest.raises(CheckpointError, match=r"config\.json: ViCLIPConfig.num_frames must be .* got 1000000000000.0"):
        viclip.load_model(checkpoint=folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"config\.json: not a readable JSON file"):
        viclip.load_model(checkpoint=folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not a pretrained folder"):
        viclip.load_model(checkpoint=folder)


def test_hub_name_loads_from_the_offline_cache(hub, tiny):
    cache, commit = hub
    weights = resolve_pretrained("hf-hub:viclip-test/tiny")
    assert weights == cache / "models--viclip-test--tiny" / "snapshots" / commit / "model.safetensors"
    _assert_same(tiny, viclip.load_model(checkpoint="hf-hub:viclip-test/tiny"))
    _assert_same(tiny, viclip.load_model(checkpoint=f"hf-hub:viclip-test/tiny@{commit}"))  # a pinned revision
    longer = viclip.load_model(checkpoint="hf-hub:viclip-test/tiny", num_frames=16)
    assert longer.vision_encoder.temporal_positional_embedding.shape == (1, 8, 64)


def test_uncached_hub_name_names_the_cache_and_offline_mode(hub, tmp_path):
    cache, _ = hub
    with pytest.raises(CheckpointError) as err:
        viclip.load_model(checkpoint="hf-hub:viclip-test/absent")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("hf-hub:viclip-test/absent: config.json is not in the Hugging Face cache")
    assert str(cache) in message and "HF_HUB_OFFLINE is set" in message and "hf download viclip-test/absent" in message
    (tmp_path / "config.json").write_text("{}")
    add_to_hub_cache(cache, "viclip-test/half", {"config.json": tmp_path / "config.json"})
    with pytest.raises(CheckpointError, match="hf-hub:viclip-test/half: model.safetensors is not in the Hugging Face"):
        viclip.load_model(checkpoint="hf-hub:viclip-test/half")
    (tmp_path / "config.json").write_text('{"architectures": ["CLIPModel"], "model_type": "clip"}')
    add_to_hub_cache(cache, "openai/clip", {"config.json": tmp_path / "config.json"})  # no weights: never reached
    with pytest.raises(CheckpointError, match="not a ViCLIP config"):
        viclip.load_model(checkpoint="hf-hub:openai/clip")
    with pytest.raises(CheckpointError, match="hf-hub:viclip-test/tiny@0123456789"):
        viclip.load_model(checkpoint="hf-hub:viclip-test/tiny@" + "0123456789" * 4)  # a commit not in the cache


def test_push_to_hub_uploads_the_pretrained_folder(tmp_path, monkeypatch, tiny):
    """HfApi's two network calls are replaced by recorders (no network here); the uploaded folder must load."""
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        copy = tmp_path / "uploaded"
        copy.mkdir()
        for f in Path(folder_path).iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="",
                                          commit_description="", oid="abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = tiny.push_to_hub("viclip-test/pushed", private=True, commit_message="tiny")
    assert url == "https://huggingface.co/viclip-test/pushed/commit/abc"
    assert [c[:2] for c in calls] == [("create_repo", "viclip-test/pushed"), ("upload_folder", "viclip-test/pushed")]
    assert calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    assert calls[1][2]["commit_message"] == "tiny"
    _assert_same(tiny, viclip.load_model(checkpoint=tmp_path / "uploaded"))


def test_convert_weights_writes_each_format(tmp_path, tiny):
    src = viclip.model.export_official(tiny, tmp_path / "tiny.pth")
    for destination in ("tiny.safetensors", "tiny_folder", "again.pth"):
        path, report = convert_weights(str(src), str(tmp_path / destination))
        assert report is None
        _assert_same(tiny, viclip.load_model(checkpoint=path))
    assert (tmp_path / "tiny_folder" / "config.json").is_file()
    with pytest.raises(ConfigError, match="--from-clip needs --model"):
        convert_weights(str(src), str(tmp_path / "x.pth"), from_clip=True)


def test_convert_tool_reads_a_hub_name_offline(hub, tmp_path, tiny):
    """The tool in a subprocess that only has the environment: HF_HUB_OFFLINE=1, HF_HUB_CACHE=the test's cache."""
    out = tmp_path / "from_hub.pth"
    tool = ROOT / "tools" / "convert_checkpoint.py"
    run = subprocess.run([sys.executable, tool, "--input", "hf-hub:viclip-test/tiny", "--out", out],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    _assert_same(tiny, viclip.load_model(checkpoint=out))


def test_convert_tool_error_is_one_line(hub, tmp_path, monkeypatch):
    from viclip.commands.convert import main

    argv = ["viclip-convert", "--input", "hf-hub:viclip-test/no", "--out", str(tmp_path / "x")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value.code).startswith("viclip-convert: error: hf-hub:viclip-test/no: config.json is not in")
    assert "\n" not in str(exit_.value.code)
    src = viclip.model.export_official(tiny_model(), tmp_path / "tiny.pth")
    monkeypatch.setattr(sys, "argv", ["viclip-convert", "--input", str(src), "--out", str(tmp_path / "y.pth"),
                                      "--num-frames", "0"])  # once dropped as falsy: a copy at 8 frames
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value.code) == ("viclip-convert: error: ViCLIPConfig.num_frames must be an integer in "
                                     "[1, 1024], got 0")
    assert not (tmp_path / "y.pth").exists()


def test_one_config_rule_for_folders_and_file_metadata(tmp_path, tiny):
    """config.json and a safetensors file's own metadata are read by one rule: unknown fields refused, bad
    values named, the retired mask_ratio dropped with a warning (old exports still load)."""
    from safetensors.torch import save_file

    def with_meta(meta: dict, name: str) -> Path:
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, path,
                  metadata={"format": "pt", "viclip_config": json.dumps(meta)})
        return path

    saved = dataclasses.asdict(tiny.cfg)
    assert "mask_ratio" not in saved
    for bad, match in (({"width": 64.5}, r"ViCLIPConfig.width must be an integer .* got 64.5"),
                       ({"num_frames": 1e12}, r"ViCLIPConfig.num_frames must be an integer .* got 1000000000000.0"),
                       ({"mlp_ratio": 4}, r"not a ViCLIP config \(unknown fields: mlp_ratio\)")):
        path = with_meta({**saved, **bad}, "bad.safetensors")
        with pytest.raises(CheckpointError, match=r"bad\.safetensors \(its viclip_config\): " + match):
            viclip.load_model(checkpoint=path)
    old = with_meta({**saved, "mask_ratio": 0.9}, "old.safetensors")
    with pytest.warns(UserWarning, match="retired config field mask_ratio=0.9"):
        _assert_same(tiny, viclip.load_model(checkpoint=old))
    folder = tiny.save_pretrained(tmp_path / "old_folder")
    (folder / "config.json").write_text(json.dumps({"model_name": "tiny", **saved, "mask_ratio": 0.9}))
    with pytest.warns(UserWarning, match="retired config field mask_ratio"):
        _assert_same(tiny, viclip.load_model(checkpoint=folder))

