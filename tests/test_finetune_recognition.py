"""Recognition fine-tuning (trainer: recognition) on the synthetic motion classes, in process on one rank.

The starting checkpoint is a `tiny` ViCLIP with random weights (the real architecture at test size; no
trained weights exist here), so learning the four motions is the fine-tuning's own doing: a head on a
random tower would stay near chance (25 %). Also: every ft_k* experiment composes, and the optimizer's
parameter groups hold the learning rate timm's layer decay gives each block.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip.data.synthetic import make_synthetic
from viclip.finetune.recognition import RecognitionTrainer
from viclip.model import create_model, export_official
from viclip.model.classifier import classifier_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
LAYERS = 2  # the tiny model's blocks
LAYER_DECAY = 0.6


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.mark.parametrize("experiment", ["ft_k400", "ft_ssv2", "ft_k710", "ft_k710_k400"])
def test_experiments_compose(experiment):
    cfg = _compose("train", [f"experiment={experiment}", "checkpoint=x.pth"])
    assert cfg.trainer == "recognition" and cfg.finetune.best_metric == "top1"
    assert cfg.model.overrides.num_frames in (8, 16)


def _expected_scale(name: str) -> float:
    """The layer-decay formula written out: embeddings 0, block i -> i + 1, the rest LAYERS + 1."""
    if re.match(r"vision_encoder\.(conv1|class_embedding|positional_embedding|temporal_positional_embedding|ln_pre)",
                name):
        layer = 0
    elif m := re.match(r"vision_encoder\.transformer\.resblocks\.(\d+)\.", name):
        layer = int(m.group(1)) + 1
    else:
        layer = LAYERS + 1
    return LAYER_DECAY ** (LAYERS + 1 - layer)


def _val_task(val) -> list[str]:
    return [f"task.annotation={val.zeroshot_annotations}", f"task.video_root={val.zeroshot_root}",
            f"task.class_names={val.zeroshot_classes}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short fine-tuning run; the optimizer's groups are spied on after every lr update."""
    from viclip.train import trainer as trainer_module

    tmp = tmp_path_factory.mktemp("recognition")
    torch.manual_seed(0)
    ckpt = export_official(create_model("tiny"), tmp / "tiny_random.pth")
    # the labelled motion clips of the synthetic zero-shot set: 256 to train on, 48 others to test
    train = make_synthetic(tmp / "train", n_train=1, n_eval=256, size=32, seed=0)
    val = make_synthetic(tmp / "val", n_train=1, n_eval=48, size=32, seed=1)
    cfg = _compose("train", [
        "experiment=ft_k400", f"checkpoint={ckpt}", f"output_root={tmp / 'runs'}", "run_name=motion",
        "deepspeed=cpu_fp32", "logger=none", "data.num_workers=1",
        "data.augment.hflip=0", "data.augment.scale=[1.0,1.0]",  # flips swap left and right; no crops: few steps
        f"finetune.train.annotation={train.zeroshot_annotations}", f"finetune.train.video_root={train.zeroshot_root}",
        f"finetune.train.class_names={train.zeroshot_classes}",
        # after every epoch: one view of the held-out clips at the fine-tuned 4 frames; the best epoch is kept
        "finetune.eval.task=finetuned_k400", "finetune.eval.overrides=[" + ",".join(
            f"'{o}'" for o in [*_val_task(val), "protocol.views=1x1", "protocol.num_frames=4", "num_workers=0"]) + "]",
        # 128 steps learn the motions from a random tower only without mixup/cutmix (test_mix_clips covers it),
        # RandAugment and erasing (their own tests below); UMT's head and 2 repeated samples stay on
        "finetune.mixup.mixup_alpha=0", "finetune.mixup.cutmix_alpha=0", "finetune.augment.rand_augment=null",
        "finetune.augment.random_erasing=0",
        f"finetune.layer_decay={LAYER_DECAY}", "model.overrides.drop_path_rate=0.1", "model.overrides.num_frames=4",
        "optim.lr=3e-3", "phases.finetune.epochs=16", "phases.finetune.warmup_epochs=1", "train.batch_size=16",
        "train.log_every=16",
    ])
    seen = []
    set_lr = trainer_module.set_lr

    def spy_set_lr(optimizer, lr):
        set_lr(optimizer, lr)
        seen.append((lr, [(g["lr"], g.get("lr_scale")) for g in optimizer.param_groups]))

    groups = {}
    param_groups = RecognitionTrainer.param_groups

    def spy_groups(self, model):
        out = param_groups(self, model)
        names = {id(p): n for n, p in model.named_parameters()}
        groups["names"] = [[names[id(p)] for p in g["params"]] for g in out]
        return out

    with pytest.MonkeyPatch.context() as mp:
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")  # one compute thread beside the decoding worker on a small machine
        mp.setattr(trainer_module, "set_lr", spy_set_lr)
        mp.setattr(RecognitionTrainer, "param_groups", spy_groups)
        result = trainer_module.train(cfg, RecognitionTrainer)
    return {"tmp": tmp, "result": result, "seen": seen, "groups": groups, "val": val, "ckpt": ckpt}


def test_layer_decay_gives_each_block_the_lr_of_the_formula(run):
    names = run["groups"]["names"]
    assert {n.split(".")[0] for g in names for n in g} == {"vision_encoder", "fc_norm", "head"}  # no text tower
    assert not any(n.startswith(("vision_encoder.ln_post", "vision_encoder.proj")) for g in names for n in g)
    for lr, groups in run["seen"]:
        assert len(groups) == len(names)
        for (group_lr, _), group_names in zip(groups, names):
            for name in group_names:
                assert group_lr == pytest.approx(lr * _expected_scale(name)), name
    scales = {_expected_scale(n) for g in names for n in g}
    assert len(scales) == LAYERS + 2  # embeddings, each block, head: all different


def test_recognition_finetuning_learns_the_synthetic_motions(run):
    from viclip.eval.runner import evaluate

    weights = Path(run["result"].exports["finetune"])
    assert weights.name == "best.pth"  # the epoch of the best val top1, kept by the per-epoch evaluation
    model = classifier_from_checkpoint(weights)
    assert model.num_classes == 4 and model.cfg.drop_path_rate == 0.1 and model.cfg.num_frames == 4
    records = [json.loads(line) for line in (run["result"].run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/top1" in r]
    assert [r["epoch"] for r in val] == list(range(1, 17))
    best = max(r["val/top1"] for r in val)
    assert val[-1]["best"] == best
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    assert losses[-1] < losses[0]
    # eval.py on the kept weights: the held-out clips, as the user runs it
    common = ["task=finetuned_k400", *_val_task(run["val"]), "embedding_cache=false", "num_workers=0",
              f"cache_dir={run['tmp'] / 'cache'}", "protocol.views=1x1", "protocol.num_frames=4"]
    after = evaluate(_compose("eval", [*common, f"checkpoint={weights}", f"output_dir={run['tmp'] / 'eval'}"]))
    assert after["name"] == "finetuned_k400+f4+v1x1" and after["data"]["evaluated"] == 48
    assert after["metrics"]["top1"] == pytest.approx(best)
    torch.manual_seed(0)
    start = export_official(classifier_from_checkpoint(run["ckpt"], 4, num_frames=4), run["tmp"] / "start.pth")
    before = evaluate(_compose("eval", [*common, f"checkpoint={start}", f"output_dir={run['tmp'] / 'eval0'}"]))
    assert before["metrics"]["top1"] <= 45.0, before["metrics"]  # 4 balanced classes: chance is 25 %
    assert after["metrics"]["top1"] >= 60.0, (before["metrics"], after["metrics"])


def test_mix_clips_cuts_one_box_through_every_frame_and_mixes_the_targets():
    from timm.data import Mixup

    from viclip.finetune.recognition import mix_clips

    np.random.seed(0)
    cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    video = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 5, 3, 16, 16).clone()
    mixed, target = mix_clips(cutmix, video.clone(), torch.tensor([0, 1, 2, 1]))
    swapped = mixed[0] != video[0]  # clip 0 takes its box from clip 3 (the batch reversed)
    assert swapped.any() and torch.equal(mixed[0][swapped], video[3][swapped])
    assert (swapped == swapped[:1, :1]).all()  # the same pixels in every frame and channel
    kept = 1.0 - swapped[0, 0].float().mean().item()
    assert 0.0 < kept < 1.0 and target[0].tolist() == pytest.approx([kept, 1.0 - kept, 0.0])  # box area weighs
    assert target.sum(-1).tolist() == pytest.approx([1.0] * 4)


def test_head_map_keeps_the_k710_rows_of_the_target_classes_in_their_order(tmp_path):
    from types import SimpleNamespace

    from viclip.model import get_config
    from viclip.model.classifier import ViCLIPClassifier
    from viclip.train.config import ConfigError

    data = make_synthetic(tmp_path / "data", n_train=1, n_eval=4, size=32, seed=0)
    names = data.zeroshot_classes.read_text().split("\n")[:4]
    k710 = ["abseiling", names[2], names[0], "zumba", names[3], names[1]]  # the 4 motions among 6 K710 classes
    torch.manual_seed(0)
    ckpt = export_official(ViCLIPClassifier(get_config("tiny"), 6, init_scale=1.0), tmp_path / "k710.pth")
    rows = [k710.index(n) for n in names]
    label_map = tmp_path / "label_map.json"

    def build(mapping):
        label_map.write_text(json.dumps({"classes": k710, "sources": {"motion": mapping}}))
        cfg = _compose("train", [
            "experiment=ft_k710_k400", f"checkpoint={ckpt}", f"finetune.train.annotation={data.zeroshot_annotations}",
            f"finetune.train.video_root={data.zeroshot_root}", f"finetune.train.class_names={data.zeroshot_classes}",
            f"finetune.head_map.file={label_map}", "finetune.head_map.source=motion",
            # the tiny model has no recipe of its own
            "optim.lr=1e-5", "phases.finetune.epochs=1", "phases.finetune.warmup_epochs=0",
            "model.overrides.drop_path_rate=0", "finetune.layer_decay=0.85"])
        trainer = RecognitionTrainer(cfg)
        trainer.info = SimpleNamespace(is_main=False)
        return trainer.build_model()

    model = build(rows)
    head = torch.load(ckpt, weights_only=True)["model"]["head.weight"]
    assert model.num_classes == 4 and torch.equal(model.head.weight, head[rows])
    with pytest.raises(ConfigError, match="first difference at label 0"):
        build(rows[::-1])


def test_umt_schedule_starts_its_warmup_at_warmup_lr_and_floors_at_min_lr():
    from viclip.train.optim import WarmupCosine

    umt = WarmupCosine(1e-4, total_steps=100, warmup_steps=10, min_lr_ratio=0.01, min_lr=2e-6, warmup_lr=2e-6)
    plain = WarmupCosine(1e-4, total_steps=100, warmup_steps=10, min_lr_ratio=0.01)
    assert umt(0) == pytest.approx(2e-6) and plain(0) == pytest.approx(1e-5)  # linspace(2e-6, lr) vs lr/10
    assert umt(9) == pytest.approx(1e-4) and plain(9) == pytest.approx(1e-4)
    assert umt(10**6) == pytest.approx(2e-6) and plain(10**6) == pytest.approx(1e-6)  # absolute vs 1 % of lr


def test_rand_augment_applies_the_same_ops_to_every_frame():
    from viclip.finetune.augment import ClipRandAugment

    frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    clip = frame.expand(6, -1, -1, -1).contiguous()  # six identical frames
    augment = ClipRandAugment("rand-m7-n4-mstd0.5-inc1", input_size=32)
    outs = [augment(clip, seed) for seed in range(8)]
    for out in outs:
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(1, 6))  # one draw for the clip
    assert sum(not torch.equal(out[0], frame) for out in outs) >= 6  # and it does change the frames
    assert torch.equal(augment(clip, 3), outs[3])  # seeded: a resumed epoch augments alike
    # timm's transform alone draws anew for every frame: the replay is what keeps the frames alike
    plain = [np.asarray(augment.transform(__import__("PIL.Image").Image.fromarray(frame.numpy()))) for _ in range(6)]
    assert any(not np.array_equal(plain[0], p) for p in plain[1:])


def test_repeated_augmentation_yields_each_video_twice_a_step_in_two_crops(tmp_path):
    from viclip.data.transforms import VideoTransform
    from viclip.finetune.data import FinetuneLoader, LoaderConfig, Sample

    data = make_synthetic(tmp_path / "data", n_train=1, n_eval=8, size=32, seed=0)
    records = json.loads(Path(data.zeroshot_annotations).read_text())
    samples = [Sample(str(Path(data.zeroshot_root) / r["video"]), i, label=i % 4) for i, r in enumerate(records)]
    transform = VideoTransform(True, 32, scale=(0.08, 1.0), normalize=False)
    loader = FinetuneLoader(samples, LoaderConfig(batch_size=4, num_frames=4, repeats=2), transform)
    batches = list(loader)
    assert len(batches) == 2
    seen = []
    for batch in batches:
        assert batch["video"].shape[0] == 8
        index = batch["index"].tolist()
        assert index[0::2] == index[1::2] and len(set(index)) == 4  # each video twice, side by side
        assert batch["label"].tolist()[0::2] == batch["label"].tolist()[1::2]
        assert all(not torch.equal(batch["video"][i], batch["video"][i + 1]) for i in range(0, 8, 2))
        seen += index[0::2]
    assert sorted(seen) == list(range(8))  # one epoch: every video once, as two samples


def test_umt_head_mean_pools_patch_tokens_and_starts_at_init_scale():
    from viclip.model import get_config
    from viclip.model.classifier import ViCLIPClassifier

    cfg = get_config("tiny")
    torch.manual_seed(0)
    umt = ViCLIPClassifier(cfg, 700, pool="mean")
    assert umt.head.in_features == cfg.width and umt.fc_norm.normalized_shape == (cfg.width,)
    assert umt.head.weight.std().item() == pytest.approx(0.02 * 0.001, rel=0.1)  # trunc-normal 0.02 x 0.001
    assert torch.count_nonzero(umt.head.bias) == 0
    assert not umt.vision_encoder.proj.requires_grad and not umt.vision_encoder.ln_post.weight.requires_grad
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    tokens = umt.vision_encoder.forward_tokens(video)
    assert torch.allclose(umt.encode_video(video), umt.fc_norm(tokens[:, 1:].mean(1)))  # class token left out
    assert ViCLIPClassifier(cfg, 700, pool="cls").head.in_features == cfg.embed_dim


def test_umt_head_survives_export_and_reload(tmp_path):
    from viclip.model import get_config
    from viclip.model.classifier import ViCLIPClassifier

    torch.manual_seed(0)
    model = ViCLIPClassifier(get_config("tiny"), 5, init_scale=1.0, pool="mean")
    path = export_official(model, tmp_path / "umt.pth")
    loaded = classifier_from_checkpoint(path)  # the pooling is read from the file (fc_norm.*)
    assert loaded.pool == "mean" and torch.equal(loaded.head.weight, model.head.weight)


def test_random_erasing_boxes_each_frame_of_a_clip_on_its_own():
    from viclip.finetune.augment import ClipErasing

    torch.manual_seed(0)
    video = torch.zeros(3, 8, 3, 32, 32)
    ClipErasing(probability=1.0)(video)
    erased = video.abs().sum(2) > 0  # [B, T, H, W]
    assert erased.flatten(2).any(-1).all()  # every frame of every clip got a box at probability 1
    assert any(not torch.equal(erased[0, 0], erased[0, t]) for t in range(1, 8))  # frames draw their own boxes
    torch.manual_seed(0)
    untouched = torch.zeros(3, 8, 3, 32, 32)
    ClipErasing(probability=0.0)(untouched)
    assert not untouched.any()


def test_the_recipe_follows_the_checkpoints_size_and_a_given_value_wins(tmp_path, monkeypatch):
    from viclip.finetune.recognition import apply_size_recipe
    from viclip.model import get_config
    from viclip.train.config import ConfigError

    b16, tiny = tmp_path / "b16.pth", tmp_path / "tiny.pth"  # configs read as from the files, without 600 MB
    b16.touch()
    tiny.touch()
    monkeypatch.setattr("viclip.finetune.recognition.read_config",
                        lambda path: get_config("vit_b16" if str(path) == str(b16) else "tiny"))
    cfg = apply_size_recipe(_compose("train", ["experiment=ft_k710", f"checkpoint={b16}"]))
    assert (cfg.optim.lr, cfg.phases.finetune.lr, cfg.phases.finetune.epochs, cfg.model.overrides.drop_path_rate,
            cfg.finetune.layer_decay) == (4e-4, 4e-4, 35, 0.1, 0.75)  # UMT's b16 script, x 2 repeats
    cfg = apply_size_recipe(_compose("train", ["experiment=ft_k710", f"checkpoint={b16}", "optim.lr=1e-3"]))
    assert cfg.optim.lr == 1e-3 and cfg.phases.finetune.epochs == 35
    l14 = _compose("train", ["experiment=ft_k710", "checkpoint=x.pth"]).finetune.recipes.vit_l14
    assert (l14.optim.lr, l14.phases.finetune.epochs, l14.model.overrides.drop_path_rate,
            l14.finetune.layer_decay) == (2e-4, 20, 0.2, 0.85)  # UMT's l16 script, x 2 repeats
    with pytest.raises(ConfigError, match=r"is a tiny, and finetune.recipes has no tiny values of .*optim.lr"):
        apply_size_recipe(_compose("train", ["experiment=ft_k710", f"checkpoint={tiny}"]))
