"""Evaluation on your own videos: task=custom_zeroshot / custom_retrieval with annotation=, video_root=,
class_names= and label=, results named after the user's set, the table's columns explained."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.data.synthetic import make_synthetic
from viclip.errors import ConfigError
from viclip.eval.report import format_table
from viclip.eval.runner import evaluate
from viclip.model import create_model, export_safetensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("custom")
    torch.manual_seed(0)
    ckpt = export_safetensors(create_model("tiny"), tmp / "tiny.safetensors")
    return {"tmp": tmp, "ckpt": ckpt, "syn": make_synthetic(tmp / "synthetic", n_train=1, n_eval=6, size=32)}


def _evaluate(data, tmp_path, *overrides: str) -> dict:
    base = [f"checkpoint={data['ckpt']}", f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}",
            "num_workers=0", "batch_size=4", "progress=false"]
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        return evaluate(compose("eval", overrides=[*base, *overrides]))


def test_custom_zeroshot_is_labelled_with_the_users_name(data, tmp_path, capsys):
    syn = data["syn"]
    res = _evaluate(data, tmp_path, "task=custom_zeroshot", f"annotation={syn.zeroshot_annotations}",
                    f"video_root={syn.zeroshot_root}", f"class_names={syn.zeroshot_classes}", "label=my_clips")
    assert (res["name"], res["task"], res["dataset"], res["kind"]) == ("my_clips", "my_clips", "my_clips", "zeroshot")
    assert res["data"]["evaluated"] == 6 and res["data"]["num_classes"] == 4
    assert (tmp_path / "out" / "my_clips.json").is_file()
    printed = capsys.readouterr().out
    assert "my_clips" in printed and "Synthetic" not in printed
    assert "AVG: the mean of top-1 and top-5 accuracy" in printed


def test_custom_retrieval_defaults_its_label_to_the_annotation_file(data, tmp_path):
    syn = data["syn"]
    annotation = tmp_path / "holiday_videos.json"
    shutil.copy(syn.retrieval_annotations, annotation)
    res = _evaluate(data, tmp_path, "task=custom_retrieval", f"annotation={annotation}",
                    f"video_root={syn.retrieval_root}")
    assert (res["name"], res["dataset"], res["kind"]) == ("holiday_videos", "holiday_videos", "retrieval")
    assert res["data"]["num_texts"] == len([c for i in json.loads(annotation.read_text()) for c in i["caption"]])
    table = format_table([res])
    assert "holiday_videos" in table and "T2V: % of texts whose video ranks first" in table


def test_custom_task_without_an_annotation_names_the_option(data, tmp_path):
    with pytest.raises(ConfigError, match=r"annotation is not set for a zeroshot task of your own videos: give "
                                          r"annotation=FILE"):
        _evaluate(data, tmp_path, "task=custom_zeroshot", f"video_root={tmp_path}")
