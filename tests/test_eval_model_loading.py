"""checkpoint= resolution, architecture naming, wise-ft blending and option naming."""

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.errors import ConfigError
from viclip.eval.model_loading import resolve_checkpoint, wise_ft
from viclip.eval.runner import variant_suffix
from viclip.model import CheckpointError, ViCLIP, create_model, export_official, export_safetensors, init_from_clip
from viclip.model.weights import model_name_of
from viclip.testing.hub_cache import add_to_hub_cache, offline_hub

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_file_and_newest_export_of_a_run_directory(tmp_path):
    model = create_model("tiny")
    old = export_official(model, tmp_path / "run" / "weights" / "pretrain.pth")
    new = export_official(model, tmp_path / "run" / "weights" / "unmasked.pth")
    past = time.time() - 100
    os.utime(old, (past, past))
    export_safetensors(model, tmp_path / "run" / "eval" / "not-an-export.safetensors")  # newer, outside weights/
    assert resolve_checkpoint(old) == old
    assert resolve_checkpoint(tmp_path / "run") == new
    other = export_safetensors(model, tmp_path / "other_run" / "sub" / "model.safetensors")
    assert resolve_checkpoint(tmp_path / "other_run") == other
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without exported weights"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="checkpoint= is required"):
        resolve_checkpoint(None)


def test_resolve_pretrained_folder_and_hub_name(tmp_path, monkeypatch):
    model = create_model("tiny")
    folder = model.save_pretrained(tmp_path / "folder")
    export_safetensors(model, folder / "extra" / "newer.safetensors")  # a folder is not searched like a run directory
    assert resolve_checkpoint(folder) == folder / "model.safetensors"
    offline_hub(monkeypatch, tmp_path / "hub")
    files = {n: folder / n for n in ("config.json", "model.safetensors")}
    commit = add_to_hub_cache(tmp_path / "hub", "org/tiny", files)
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / commit
    assert resolve_checkpoint("hf-hub:org/tiny") == snapshot / "model.safetensors"
    with pytest.raises(CheckpointError, match="hf-hub:org/other: config.json is not in the Hugging Face cache"):
        resolve_checkpoint("hf-hub:org/other")


def test_model_name_from_geometry():
    cfg = create_model("tiny").cfg
    assert model_name_of(cfg) == "tiny"
    assert model_name_of(dataclasses.replace(cfg, num_frames=4)) == "tiny"  # frames are a protocol choice
    assert model_name_of(dataclasses.replace(cfg, layers=3)) == "vit_w64_l3_p8"


def _clip_state_dict(model: ViCLIP) -> dict[str, torch.Tensor]:
    """A CLIP-named state dict (OpenAI layout) of the same size as ``model``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("vision_encoder.") and "temporal" not in k:
            out["visual." + k.removeprefix("vision_encoder.")] = v[:, :, 0] if k.endswith("conv1.weight") else v
        elif k.startswith("text_encoder."):
            out[k.removeprefix("text_encoder.")] = v
    out["logit_scale"] = torch.tensor(4.0)
    return out


def test_wise_ft_blends_with_the_clip_initialisation(tmp_path):
    torch.manual_seed(0)
    clip_path = tmp_path / "clip.pt"
    torch.save(_clip_state_dict(create_model("tiny")), clip_path)
    torch.manual_seed(1)
    finetuned = create_model("tiny")
    before = {k: v.clone() for k, v in finetuned.state_dict().items()}
    zero_shot_end = ViCLIP(finetuned.cfg)
    init_from_clip(zero_shot_end, clip_path)
    with torch.no_grad():
        finetuned.vision_encoder.temporal_positional_embedding.normal_()  # trained: not CLIP's init
    before = {k: v.clone() for k, v in finetuned.state_dict().items()}
    assert wise_ft(finetuned, clip_path, alpha=0.5) == clip_path
    after = finetuned.state_dict()
    temporal = "vision_encoder.temporal_positional_embedding"  # kept, as the official wiseft.keys_to_exclude
    torch.testing.assert_close(after[temporal], before[temporal])
    for name, value in zero_shot_end.state_dict().items():
        if name != temporal:
            torch.testing.assert_close(after[name], 0.5 * value + 0.5 * before[name], msg=name)
    assert not torch.equal(after["vision_encoder.conv1.weight"], before["vision_encoder.conv1.weight"])
    blended_all = create_model("tiny")
    blended_all.load_state_dict(before)
    wise_ft(blended_all, clip_path, alpha=0.5, keep=())
    torch.testing.assert_close(blended_all.state_dict()[temporal],
                               0.5 * zero_shot_end.state_dict()[temporal] + 0.5 * before[temporal])
    with pytest.raises(ConfigError, match="wise_ft.keep names tensors the model does not have"):
        wise_ft(blended_all, clip_path, alpha=0.5, keep=("vision_encoder.nope",))
    with pytest.raises(ValueError, match="alpha"):
        wise_ft(finetuned, clip_path, alpha=1.5)
    with pytest.raises(CheckpointError, match="wise_ft.clip=openia: CLIP weights 'openia': no such file"):
        wise_ft(finetuned, "openia", alpha=0.5)


def test_non_default_options_are_named():
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        default = compose("eval", overrides=["output_dir=."])
        custom = compose("eval", overrides=["output_dir=.", "templates.reduce=embed", "dual_softmax=true",
                                            "wise_ft.clip=/w/clip.pt", "protocol.num_frames=16"])
    assert variant_suffix(default, "zeroshot") == ""
    assert variant_suffix(custom, "zeroshot") == "+f16+embed+dsl+wiseft0.5"
    assert variant_suffix(custom, "retrieval") == "+f16+dsl+wiseft0.5"  # template options do not apply


def test_official_flt_wiseft_preset_is_named_and_sets_the_scripts_protocol():
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["output_dir=.", "task=zeroshot_k400", "preset=official_flt_wiseft05"])
        blend_all = compose("eval", overrides=["output_dir=.", "wise_ft.clip=/w/clip.pt", "wise_ft.keep=[]"])
    assert variant_suffix(cfg, "zeroshot") == "+official_flt_wiseft05+wiseft0.5+bf16"
    assert (cfg.wise_ft.clip, cfg.wise_ft.alpha, list(cfg.wise_ft.keep)) == (
        "openai", 0.5, ["vision_encoder.temporal_positional_embedding"])
    assert (cfg.protocol.num_frames, cfg.protocol.sampling, cfg.protocol.antialias) == (8, "middle", False)
    assert (cfg.templates.set, cfg.templates.reduce, cfg.precision) == ("kinetics", "sim", "bf16")
    assert variant_suffix(blend_all, "zeroshot") == "+wiseft0.5-keep"


def test_eval_runs_from_a_hub_name(tmp_path, monkeypatch):
    """evaluate() with checkpoint=hf-hub:ORG/NAME (offline, a laid-out cache): the results name the snapshot
    file and the same scores come out as from the folder's file itself."""
    from viclip.eval.runner import evaluate

    torch.manual_seed(0)
    folder = create_model("tiny").save_pretrained(tmp_path / "folder")
    offline_hub(monkeypatch, tmp_path / "hub")
    add_to_hub_cache(tmp_path / "hub", "org/tiny", {n: folder / n for n in ("config.json", "model.safetensors")})
    common = ["task=synthetic_zeroshot", "task.synthetic.n_eval=4", "task.synthetic.size=32", "num_workers=0",
              f"task.synthetic.root={tmp_path / 'synthetic'}", "embedding_cache=false", "progress=false"]
    results = {}
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        for name, checkpoint in (("hub", "hf-hub:org/tiny"), ("file", folder / "model.safetensors")):
            cfg = compose("eval", overrides=[*common, f"checkpoint={checkpoint}", f"output_dir={tmp_path / name}",
                                             f"cache_dir={tmp_path / 'cache'}"])
            results[name] = evaluate(cfg)
    assert results["hub"]["checkpoint"]["path"].startswith(str(tmp_path / "hub" / "models--org--tiny" / "snapshots"))
    assert results["hub"]["checkpoint"]["sha256"] == results["file"]["checkpoint"]["sha256"]
    assert results["hub"]["checkpoint"]["model"] == "tiny"
    assert results["hub"]["metrics"] == results["file"]["metrics"]
