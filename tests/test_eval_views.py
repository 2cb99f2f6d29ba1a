"""Multi-view testing: a multi-view run's scores equal the mean of the single views, each computed here on
its own (decode, temporal clip, spatial crop, normalise, encode). Tiny random-weight models of the real
architecture (no trained weights exist here): these tests check the protocol, not accuracy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video, write_mp4
from viclip.eval.runner import Evaluator, evaluate
from viclip.eval.tasks import load_task
from viclip.eval.templates import class_prototypes, class_scores
from viclip.eval.views import Views, make_views, spatial_crop, temporal_clips
from viclip.model import create_model, export_official, get_config, tokenize
from viclip.model.classifier import ViCLIPClassifier

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["alpha", "beta", "gamma"]


def test_views_parse_and_refuse_bad_text():
    assert Views.parse("4x3") == Views(4, 3) and str(Views.parse(None)) == "1x1" and Views(2, 3).count == 6
    for bad in ("4", "0x3", "4x3x1", "ax3"):
        with pytest.raises(ValueError, match="protocol.views must be CLIPSxCROPS"):
            Views.parse(bad)


def test_temporal_clips_interleave_and_crops_walk_the_long_side():
    frames = torch.arange(12)
    assert temporal_clips(frames, 3).tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    clip = torch.arange(64, dtype=torch.uint8).repeat(2, 3, 32, 1)  # [T, 3, 32, 64]: column index as value
    left, centre, right = (spatial_crop(clip, j, 3, 16) for j in range(3))
    assert left.shape == (2, 3, 16, 16)
    assert left[0, 0, 0, 0] < centre[0, 0, 0, 0] < right[0, 0, 0, 0] and right[0, 0, 0, -1] >= 60


def test_official_crops_are_umts_bilinear_resize_and_one_crop_is_the_single_view():
    """UMT's (VideoMAE's) test resize is cv2.INTER_LINEAR on the short side, the long side and the crop starts
    truncated; ours matches it within a grey level (rounding of cv2's fixed point). One crop is the 1x1 resize."""
    cv2 = pytest.importorskip("cv2")  # opencv comes with the curation extra (PySceneDetect)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 90, 161, 3), dtype=np.uint8)  # 161 * 32 / 90 = 57.2: truncated to 57
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    for j, start in enumerate((0, 12, 25)):  # int(j * (57 - 32) / 2)
        reference = np.stack([cv2.resize(f, (57, 32), interpolation=cv2.INTER_LINEAR) for f in frames])
        ours = spatial_crop(clip, j, 3, 32).permute(0, 2, 3, 1).numpy()
        diff = np.abs(ours.astype(int) - reference[:, :, start:start + 32].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.2  # 13 % of noise pixels one level apart
    bicubic = spatial_crop(clip, 2, 3, 32, resize="bicubic")  # round(57.2) = 57, start round(12.5 * 2) = 25
    assert bicubic.shape == (2, 3, 32, 32) and not torch.equal(bicubic, spatial_crop(clip, 2, 3, 32))
    single = VideoTransform(False, image_size=32, normalize=False)(torch.from_numpy(frames))
    assert torch.equal(spatial_crop(clip, 0, 1, 32), single)


def _videos(tmp: Path, n: int = 6) -> tuple[Path, Path, Path]:
    """Non-square clips (so the three crops differ) of shapes moving in time, 24 frames each."""
    rng = np.random.default_rng(0)
    root = tmp / "videos"
    root.mkdir()
    records = []
    for i in range(n):
        frames = np.full((24, 32, 48, 3), rng.integers(0, 80), np.uint8)
        for t in range(24):
            x = (2 * t + 7 * i) % 40
            frames[t, 8:20, x:x + 8] = rng.integers(120, 255, 3)
        (root / f"{i}.mp4").write_bytes(write_mp4(frames, fps=8))
        records.append({"video": f"{i}.mp4", "caption": CLASSES[i % 3]})
    annotation = tmp / "val.json"
    annotation.write_text(json.dumps(records))
    classes = tmp / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return annotation, root, classes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    annotation, root, classes = _videos(tmp)
    torch.manual_seed(0)
    viclip = create_model("tiny")
    classifier = ViCLIPClassifier(get_config("tiny"), len(CLASSES), init_scale=50.0)  # a head that decides
    return {"tmp": tmp, "annotation": annotation, "root": root, "classes": classes,
            "viclip": export_official(viclip, tmp / "viclip.pth"),
            "classifier": export_official(classifier, tmp / "classifier.pth")}


def _cfg(data, task: str, ckpt: str, views: str, kind: str):
    classes = [f"task.class_names={data['classes']}"] if kind != "retrieval" else []
    overrides = [f"task={task}", f"checkpoint={data[ckpt]}", f"task.annotation={data['annotation']}",
                 f"task.video_root={data['root']}", *classes, f"task.kind={kind}", f"protocol.views={views}",
                 "embedding_cache=false", f"cache_dir={data['tmp'] / 'cache'}",
                 "num_workers=0", "batch_size=4", "templates.set=none", f"output_dir={data['tmp'] / 'out'}"]
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        return compose("eval", overrides=overrides)


def _single_view(model, path: str, views: Views, k: int, j: int) -> torch.Tensor:
    """View (k, j) alone: decode, take temporal clip k and spatial crop j, normalise, encode."""
    frames = read_video(path, 8 * views.clips).permute(0, 3, 1, 2)
    clip = spatial_crop(frames[k::views.clips], j, views.crops, model.cfg.image_size)
    video = VideoTransform(False, image_size=model.cfg.image_size, normalize=False).normalize(clip)
    with torch.no_grad():
        return model.encode_video(video[None])[0]


def test_zeroshot_multiview_scores_are_the_mean_of_single_views(data):
    views = Views(2, 3)
    cfg = _cfg(data, "zeroshot_k400", "viclip", str(views), "zeroshot")
    split = load_task(dict(cfg.task))["eval"]
    evaluator = Evaluator(cfg, torch.device("cpu"), data["viclip"], "sha")
    embeddings, ok = evaluator.videos(split)
    assert embeddings.shape == (6, views.count, 64) and bool(ok.all())
    model = evaluator.model
    with torch.no_grad():
        protos = class_prototypes(model.encode_text(tokenize(CLASSES, context_length=32)), 1, "sim")
    for n, record in enumerate(split.records):
        singles = [_single_view(model, record.video, views, k, j) for k in range(2) for j in range(3)]
        torch.testing.assert_close(embeddings[n], torch.stack(singles), atol=1e-4, rtol=1e-4)
    single_scores = torch.stack([class_scores(embeddings[:, v], protos) for v in range(views.count)]).mean(0)
    assert not torch.allclose(class_scores(embeddings[:, 0], protos), class_scores(embeddings[:, 2], protos))
    results = evaluate(cfg)
    assert results["name"] == "zeroshot_k400+v2x3+tpl-none" and results["protocol"]["views"] == "2x3"
    labels = torch.tensor([r.label for r in split.records])
    top1 = 100.0 * float((single_scores.argmax(-1) == labels).double().mean())
    assert results["metrics"]["top1"] == pytest.approx(top1)


def test_finetuned_task_averages_softmax_over_views_and_defaults_to_its_views(data, capsys):
    cfg = _cfg(data, "finetuned_ssv2", "classifier", "null", "finetuned")
    results = evaluate(cfg)
    assert "Fine-tuned action recognition (paper Table 3)" in capsys.readouterr().out
    assert results["name"] == "finetuned_ssv2" and results["protocol"]["views"] == "2x3"  # the task's own views
    assert results["protocol"]["transform"].startswith("short side resized, 3 squares along the long side")
    evaluator = Evaluator(cfg, torch.device("cpu"), data["classifier"], "sha")
    split = load_task(dict(cfg.task))["eval"]
    views = Views(2, 3)
    probs = torch.stack([
        torch.stack([evaluator.model.head(_single_view(evaluator.model, r.video, views, k, j)).softmax(-1)
                     for k in range(2) for j in range(3)]).mean(0) for r in split.records])
    labels = torch.tensor([r.label for r in split.records])
    first_view = torch.stack([evaluator.model.head(_single_view(evaluator.model, r.video, views, 0, 0)).softmax(-1)
                              for r in split.records])
    assert not torch.allclose(first_view, probs)  # the views differ, so averaging them is what is tested
    top1 = 100.0 * float((probs.argmax(-1) == labels).double().mean())
    assert results["metrics"]["top1"] == pytest.approx(top1)
    one_view = evaluate(_cfg(data, "finetuned_ssv2", "classifier", "1x1", "finetuned"))
    assert one_view["name"] == "finetuned_ssv2+v1x1"


def test_make_views_is_clip_major():
    frames = torch.randint(0, 255, (16, 32, 48, 3), dtype=torch.uint8)
    out = make_views(frames, Views(2, 3), 16)
    assert out.shape == (6, 8, 3, 16, 16)
    clip1 = frames.permute(0, 3, 1, 2)[1::2]
    assert torch.equal(out[4], spatial_crop(clip1, 1, 3, 16))


def test_views_are_refused_for_retrieval(data):
    cfg = _cfg(data, "retrieval_msrvtt", "viclip", "4x3", "retrieval")
    with pytest.raises(ValueError, match="protocol.views=4x3 applies to zeroshot and finetuned tasks"):
        evaluate(cfg)


def test_an_unreadable_video_is_skipped_and_counted_in_a_multiview_run(data):
    listed = json.loads(data["annotation"].read_text()) + [{"video": "missing.mp4", "caption": CLASSES[0]}]
    annotation = data["tmp"] / "with_missing.json"
    annotation.write_text(json.dumps(listed))
    cfg = _cfg(dict(data, annotation=annotation), "finetuned_k400", "classifier", "4x3", "finetuned")
    results = evaluate(cfg)
    assert results["data"] | {"listed": 7, "evaluated": 6, "skipped": 1} == results["data"]
    assert results["name"] == "finetuned_k400"  # 4x3 is the task's own protocol: no suffix


def test_view_resize_is_named_in_the_results_and_checked(data):
    cfg = _cfg(data, "zeroshot_k400", "viclip", "1x3", "zeroshot")
    cfg.protocol.view_resize = "bicubic"
    results = evaluate(cfg)
    assert results["name"] == "zeroshot_k400+v1x3+views-bicubic+tpl-none"
    assert results["protocol"]["view_resize"] == "bicubic" and "bicubic" in results["protocol"]["transform"]
    cfg.protocol.view_resize = "area"
    with pytest.raises(ValueError, match="protocol.view_resize must be one of official, bicubic, got 'area'"):
        evaluate(cfg)
