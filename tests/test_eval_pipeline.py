"""eval.py end to end on the synthetic sets with a tiny random-weight ViCLIP (the real architecture
at test size; no trained weights exist here, so these tests check the pipeline, not accuracy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.data.synthetic import make_synthetic
from viclip.eval.report import REQUIRED_KEYS
from viclip.eval.runner import evaluate
from viclip.model import create_model, export_safetensors

ROOT = Path(__file__).resolve().parents[1]
N_EVAL = 13  # odd: two ranks hold 7 and 6 videos, so padding duplicates would show in the counts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    ckpt = export_safetensors(create_model("tiny"), tmp / "tiny.safetensors")
    synthetic = make_synthetic(tmp / "synthetic", n_train=1, n_eval=N_EVAL, size=32)
    return {"tmp": tmp, "ckpt": ckpt, "synthetic": synthetic}


def _base(setup, tag: str) -> list[str]:
    return [f"checkpoint={setup['ckpt']}", f"cache_dir={setup['tmp'] / ('cache_' + tag)}", "num_workers=0",
            "batch_size=4"]


def _common(setup, tag: str) -> list[str]:
    """Overrides for the synthetic tasks: the set the fixture made (same arguments, so no rebuild)."""
    return [*_base(setup, tag), f"task.synthetic.root={setup['synthetic'].root}",
            f"task.synthetic.n_eval={N_EVAL}", "task.synthetic.size=32"]


def _evaluate(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        return evaluate(compose("eval", overrides=overrides))


def _run(args: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(ROOT / "eval.py"), *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_rank_sweep_matches_one_rank_and_prints_one_table(setup):
    # One torchrun launch covers the launcher, the sweep and its combined table, the results schema,
    # the cache shared between jobs (the +dsl jobs reuse the first jobs' embeddings) and rank splitting.
    out = setup["tmp"] / "sweep"
    proc = _run(["-m", "task=synthetic_zeroshot,synthetic_retrieval", "dual_softmax=false,true",
                 f"output_root={out}", *_common(setup, "sweep")],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    results = {r["name"]: r for r in (json.loads(f.read_text()) for f in out.rglob("*.json"))}
    assert set(results) == {"synthetic_zeroshot", "synthetic_zeroshot+dsl", "synthetic_retrieval",
                            "synthetic_retrieval+dsl"}
    for r in results.values():
        assert set(REQUIRED_KEYS) <= set(r) and r["world_size"] == 2
        # each video counted once: 13 over two ranks, no padding duplicate
        assert r["data"] | {"listed": N_EVAL, "evaluated": N_EVAL, "skipped": 0} == r["data"]
        assert r["checkpoint"]["model"] == "tiny" and len(r["checkpoint"]["sha256"]) == 64
        assert r["protocol"]["num_frames"] == 8 and r["protocol"]["sampling"] == "middle"
    zs = results["synthetic_zeroshot"]
    assert set(zs["metrics"]) == {"top1", "top5", "avg"} and zs["data"]["num_classes"] == 4
    assert zs["protocol"]["templates"] == "kinetics" and zs["protocol"]["templates_reduce"] == "sim"
    assert zs["data"]["num_templates"] == 16
    ret = results["synthetic_retrieval"]
    assert {"t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "t2v_meanr", "v2t_r1", "v2t_medr"} <= set(ret["metrics"])
    assert ret["data"]["num_texts"] == 2 * N_EVAL
    assert results["synthetic_retrieval+dsl"]["protocol"]["dual_softmax"] is True
    # One combined table after the sweep (also saved), every variant a row, printed once (rank 0).
    table = next(out.rglob("table.txt")).read_text()
    assert proc.stdout.count(table.strip()) == 1
    assert "Zero-shot action recognition" in table and "Zero-shot video-text retrieval" in table
    assert "tiny tiny.safetensors+dsl" in table
    for name in ("synthetic_zeroshot", "synthetic_retrieval", "synthetic_retrieval+dsl"):
        task = name.split("+")[0]
        one = _evaluate([f"task={task}", f"dual_softmax={'+dsl' in name}", f"output_dir={setup['tmp'] / 'one'}",
                         "embedding_cache=false", *_common(setup, "one")])
        assert one["world_size"] == 1 and one["name"] == name and one["data"] == results[name]["data"]
        for key, value in one["metrics"].items():
            assert results[name]["metrics"][key] == pytest.approx(value, abs=1e-6), (name, key)


def test_missing_and_corrupt_videos_are_counted_and_excluded(setup, tmp_path):
    syn = setup["synthetic"]
    items = json.loads(syn.retrieval_annotations.read_text())
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 50)
    bad = [{"video": str(tmp_path / "absent.mp4"), "caption": "a red circle moving up"},
           {"video": str(tmp_path / "corrupt.mp4"), "caption": ["a blue square moving down", "a square"]}]
    with_bad = items[:5] + bad[:1] + items[5:9] + bad[1:] + items[9:]  # in the middle: alignment must hold
    (tmp_path / "bad.json").write_text(json.dumps(with_bad))
    (tmp_path / "clean.json").write_text(json.dumps(items))
    results = {}
    for name in ("bad", "clean"):
        results[name] = _evaluate([
            "task=synthetic_retrieval", f"task.annotation={tmp_path / (name + '.json')}",
            f"task.video_root={syn.retrieval_root}", f"output_dir={tmp_path / name}", *_common(setup, "bad")])
    assert results["bad"]["data"]["skipped"] == 2 and results["bad"]["data"]["listed"] == N_EVAL + 2
    assert results["bad"]["data"]["evaluated"] == N_EVAL == results["clean"]["data"]["evaluated"]
    assert results["bad"]["data"]["num_texts"] == results["clean"]["data"]["num_texts"]
    assert results["bad"]["metrics"] == pytest.approx(results["clean"]["metrics"])
    assert (tmp_path / "bad" / "synthetic_retrieval.json").is_file()


def test_missing_paths_fail_at_once_naming_the_field(setup, tmp_path):
    base = [f"checkpoint={setup['ckpt']}", f"data_root={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"]
    with pytest.raises(FileNotFoundError, match=r"task\.annotation=.*kinetics400.*expected a Kinetics CSV"):
        _evaluate(["task=zeroshot_k400", *base])
    with pytest.raises(FileNotFoundError, match=r"task\.annotation=.*msrvtt_test1k.json.*JSON list"):
        _evaluate(["task=retrieval_msrvtt", *base])
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(FileNotFoundError, match=r"task\.train_annotation="):
        _evaluate(["task=linear_k400", f"task.annotation={tmp_path / 'val.csv'}", f"task.video_root={tmp_path}",
                   *base])
    with pytest.raises(ValueError, match="checkpoint= is required"):
        _evaluate(["task=synthetic_zeroshot", f"output_dir={tmp_path}"])


def test_linear_probe_task(setup, tmp_path):
    # The synthetic zero-shot set stands in for both Kinetics splits: this checks the wiring (two
    # splits embedded, labels aligned, sweep on a train holdout), not a figure.
    syn = setup["synthetic"]
    res = _evaluate([
        "task=linear_k400", f"task.train_annotation={syn.zeroshot_annotations}",
        f"task.train_video_root={syn.zeroshot_root}", f"task.annotation={syn.zeroshot_annotations}",
        f"task.video_root={syn.zeroshot_root}", f"task.class_names={syn.zeroshot_classes}",
        "linear_probe.l2_grid=[1e-3,1e-1]", "linear_probe.holdout=0.3", "linear_probe.max_iter=30",
        f"output_dir={tmp_path}", *_base(setup, "linear")])
    assert res["kind"] == "linear" and res["name"] == "linear_k400"
    assert {"top1", "top5", "avg", "l2", "sweep_top1"} <= set(res["metrics"]) and res["metrics"]["top5"] == 100.0
    assert res["data"]["evaluated"] == N_EVAL and res["data"]["train"]["evaluated"] == N_EVAL
    assert res["data"]["num_classes"] == 4


def test_zeroshot_scores_match_the_model_reference(setup):
    # viclip.zero_shot is the model package's one-call reference of the official rule (16 templates,
    # official cleaning, mean of cosines); the batched, cached, rank-split path must give the same scores.
    from viclip.data.annotations import load_kinetics
    from viclip.data.transforms import VideoTransform
    from viclip.data.video import read_video
    from viclip.eval.embed import embed_texts, embed_videos
    from viclip.eval.protocol import VideoProtocol
    from viclip.eval.templates import KINETICS_TEMPLATES, class_prototypes, class_scores, expand
    from viclip.model import load_model, zero_shot

    syn = setup["synthetic"]
    records, names = load_kinetics(syn.zeroshot_annotations, syn.zeroshot_root, class_names=syn.zeroshot_classes)
    model = load_model(checkpoint=setup["ckpt"])
    video, ok = embed_videos(model, records, VideoProtocol(image_size=32), torch.device("cpu"), num_workers=0)
    protos = class_prototypes(embed_texts(model, expand(names, KINETICS_TEMPLATES), torch.device("cpu")),
                              len(KINETICS_TEMPLATES))
    ours = (class_scores(video, protos) / model.temp).log_softmax(dim=-1)
    clips = torch.stack([VideoTransform(False, image_size=32)(read_video(r.video)) for r in records])
    reference = zero_shot(model, clips, names, list(KINETICS_TEMPLATES)).log()
    assert ok.all()
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
