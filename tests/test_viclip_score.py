"""ViCLIP score (``eval.py task=viclip_score`` and ``viclip.score``) with a tiny random-weight ViCLIP: the real
architecture at test size, so these tests check the numbers' path and agreement, not their quality."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import viclip
from viclip.eval.runner import evaluate
from viclip.model import create_model, export_safetensors
from viclip.testing.videos import pan_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red square moves left", "waves on a beach", "a cat jumps onto a table"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    ckpt = export_safetensors(model, tmp / "tiny.safetensors")
    videos = tmp / "generated"
    videos.mkdir()
    for i in range(len(PROMPTS)):
        write_video(videos / f"{i:04d}.mp4", pan_frames(12, 48, 32, speed=1 + i, seed=i), fps=8)
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"tmp": tmp, "ckpt": ckpt, "model": model, "videos": videos, "prompts": tmp / "prompts.txt"}


def _evaluate(setup, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["task=viclip_score", f"videos={setup['videos']}",
                                         f"checkpoint={setup['ckpt']}", f"cache_dir={setup['tmp'] / 'cache'}",
                                         f"output_dir={setup['tmp'] / 'out'}", "num_workers=0", *overrides])
        return evaluate(cfg)


def test_eval_task_and_viclip_score_give_the_same_numbers(setup):
    results = _evaluate(setup, f"prompts={setup['prompts']}")
    rows = results["data"]["per_video"]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [Path(r["video"]).name for r in rows] == ["0000.mp4", "0001.mp4", "0002.mp4"]
    assert results["protocol"]["num_frames"] == 8 and results["protocol"]["sampling"] == "middle"
    sims = viclip.score(setup["model"], [r["video"] for r in rows], PROMPTS)
    assert sims.tolist() == pytest.approx([r["similarity"] for r in rows], abs=1e-6)
    assert results["metrics"]["mean"] == pytest.approx(float(sims.mean()), abs=1e-6)
    assert results["metrics"]["scored"] == 3 and results["data"]["skipped"] == 0
    written = json.loads((setup["tmp"] / "out" / "viclip_score.json").read_text())
    assert written["metrics"] == results["metrics"]


def test_score_is_the_cosine_of_encode_video_and_encode_text(setup):
    model, path = setup["model"], setup["videos"] / "0001.mp4"
    frames = viclip.read_video(path, num_frames=8)
    video = viclip.video_transform(train=False, image_size=model.cfg.image_size)(frames).unsqueeze(0)
    with torch.no_grad():
        expected = F.cosine_similarity(model.encode_video(video), model.encode_text(viclip.tokenize([PROMPTS[1]])))
    assert float(viclip.score(model, [path], [PROMPTS[1]])[0]) == pytest.approx(float(expected), abs=1e-5)


def test_per_video_scores_are_written_beside_the_json_and_named(setup, tmp_path, capsys):
    import csv

    results = _evaluate({**setup, "tmp": tmp_path}, f"prompts={setup['prompts']}")
    table = tmp_path / "out" / "viclip_score.per_video.csv"
    assert f"per-video scores: {table}" in capsys.readouterr().out
    rows = list(csv.DictReader(table.open()))
    assert [r["prompt"] for r in rows] == PROMPTS
    expected = [r["similarity"] for r in results["data"]["per_video"]]
    assert [float(r["similarity"]) for r in rows] == pytest.approx(expected)


def test_unreadable_video_is_nan_and_left_out_of_the_mean(setup, tmp_path):
    (tmp_path / "a.mp4").write_bytes((setup["videos"] / "0000.mp4").read_bytes())
    (tmp_path / "b.mp4").write_bytes(b"not a video")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"video": "a.mp4", "caption": PROMPTS[0]}, {"video": "b.mp4", "caption": "x"}]))
    results = _evaluate({**setup, "videos": tmp_path}, f"prompts={prompts}")
    first, second = results["data"]["per_video"]
    assert second["similarity"] is None and results["data"]["skipped"] == 1
    assert results["metrics"]["mean"] == pytest.approx(first["similarity"])
    sims = viclip.score(setup["model"], [tmp_path / "a.mp4", tmp_path / "b.mp4"], [PROMPTS[0], "x"])
    assert math.isnan(float(sims[1])) and float(sims[0]) == pytest.approx(first["similarity"], abs=1e-6)


def test_prompt_count_mismatch_names_both_paths(setup, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only one prompt\n")
    with pytest.raises(ValueError, match=r"short\.txt has 1 prompts but videos=.*generated holds 3"):
        _evaluate(setup, f"prompts={short}")
    with pytest.raises(ValueError, match="task.prompts is not set"):
        _evaluate(setup)
    assert np.isfinite(setup["model"].temp.item())
