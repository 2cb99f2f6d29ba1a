"""Evaluation results can be trusted: the embedding cache never serves a stale answer, and non-finite
embeddings end the run instead of scoring 100. Tiny random-weight models of the real architecture."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.data.synthetic import make_synthetic
from viclip.errors import DataError
from viclip.eval.metrics import ranks_from_mask, retrieval_metrics, topk_accuracy
from viclip.eval.runner import evaluate
from viclip.model import create_model, export_safetensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    model = create_model("tiny")
    ckpt = export_safetensors(model, tmp / "tiny.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    nan_ckpt = export_safetensors(model, tmp / "nan.safetensors")
    synthetic = make_synthetic(tmp / "synthetic", n_train=1, n_eval=6, size=32)
    return {"tmp": tmp, "ckpt": ckpt, "nan": nan_ckpt, "syn": synthetic}


def _evaluate(data, task: str, ckpt, cache: Path, out: Path, *extra: str) -> dict:
    syn = data["syn"]
    overrides = [f"task={task}", f"checkpoint={ckpt}", f"cache_dir={cache}", f"output_dir={out}", "num_workers=0",
                 "batch_size=4", "progress=false", f"task.synthetic.root={syn.root}", "task.synthetic.n_eval=6",
                 "task.synthetic.size=32", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        return evaluate(compose("eval", overrides=overrides))


def test_a_video_added_after_a_cached_run_is_evaluated(data, tmp_path):
    syn = data["syn"]
    items = json.loads(syn.retrieval_annotations.read_text())[:3]
    sources = [syn.retrieval_root / item["video"] for item in items]
    items = [{**item, "video": f"{i}.mp4"} for i, item in enumerate(items)]
    root = tmp_path / "videos"
    root.mkdir()
    for source, item in zip(sources[:2], items):
        shutil.copy(source, root / item["video"])
    (tmp_path / "three.json").write_text(json.dumps(items))
    paths = [f"task.annotation={tmp_path / 'three.json'}", f"task.video_root={root}"]
    first = _evaluate(data, "synthetic_retrieval", data["ckpt"], tmp_path / "cache", tmp_path / "a", *paths)
    assert (first["data"]["listed"], first["data"]["evaluated"]) == (3, 2)
    shutil.copy(sources[2], root / items[2]["video"])
    second = _evaluate(data, "synthetic_retrieval", data["ckpt"], tmp_path / "cache", tmp_path / "b", *paths)
    assert (second["data"]["evaluated"], second["data"]["skipped"]) == (3, 0)


def test_a_failed_video_in_a_cached_entry_is_retried(data, tmp_path, monkeypatch):
    # A decode failure that goes away without the file changing (a flaky mount) must not stay cached.
    from viclip.data import annotations

    syn = data["syn"]
    real, flaky = annotations.read_video, {"fail": True}

    def read_video(path, *args, **kwargs):
        if flaky["fail"] and path.endswith(json.loads(syn.retrieval_annotations.read_text())[0]["video"]):
            raise annotations.VideoDecodeError(f"cannot decode video {path}: flaky")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(annotations, "read_video", read_video)
    first = _evaluate(data, "synthetic_retrieval", data["ckpt"], tmp_path / "cache", tmp_path / "a")
    assert first["data"]["skipped"] == 1
    flaky["fail"] = False
    second = _evaluate(data, "synthetic_retrieval", data["ckpt"], tmp_path / "cache", tmp_path / "b")
    assert second["data"]["skipped"] == 0 and second["data"]["evaluated"] == 6
    third = _evaluate(data, "synthetic_retrieval", data["ckpt"], tmp_path / "cache", tmp_path / "c",
                      "embedding_cache=false")
    assert third["metrics"] == pytest.approx(second["metrics"])


@pytest.mark.parametrize("task", ["synthetic_zeroshot", "synthetic_retrieval"])
def test_nan_weights_end_the_run_instead_of_a_perfect_score(data, tmp_path, task):
    with pytest.raises(DataError, match=r"embeddings of checkpoint .*nan.safetensors: 6 of 6 are not finite"):
        _evaluate(data, task, data["nan"], tmp_path / "cache", tmp_path / "out")


def test_a_nan_poisoned_cache_entry_is_recomputed(data, tmp_path):
    cache = tmp_path / "cache"
    clean = _evaluate(data, "synthetic_zeroshot", data["ckpt"], cache, tmp_path / "a")
    entries = list(cache.glob("video-*.pt"))
    assert entries
    for path in entries:
        entry = torch.load(path, weights_only=True)
        torch.save({**entry, "embeddings": torch.full_like(entry["embeddings"], float("nan"))}, path)
    again = _evaluate(data, "synthetic_zeroshot", data["ckpt"], cache, tmp_path / "b")
    assert again["metrics"] == pytest.approx(clean["metrics"]) and again["metrics"]["top1"] < 100


def test_non_finite_scores_are_refused_by_the_metrics():
    nan = torch.full((3, 3), float("nan"))
    with pytest.raises(ValueError, match="9 scores are NaN or infinite"):
        topk_accuracy(nan, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_metrics(nan, nan, torch.arange(3))
    assert ranks_from_mask(torch.zeros(2, 2), torch.eye(2, dtype=torch.bool)).tolist() == [2, 2]


def test_a_run_that_departs_from_the_official_resize_says_so(data, tmp_path):
    res = _evaluate(data, "synthetic_zeroshot", data["ckpt"], tmp_path / "cache", tmp_path / "a",
                    "protocol.antialias=true", "protocol.max_pixels=4096")
    assert res["name"] == "synthetic_zeroshot+antialias+px4096"
    assert res["protocol"]["antialias"] is True and res["protocol"]["max_pixels"] == 4096
    official = _evaluate(data, "synthetic_zeroshot", data["ckpt"], tmp_path / "cache", tmp_path / "b")
    assert official["name"] == "synthetic_zeroshot" and official["protocol"]["antialias"] is False
