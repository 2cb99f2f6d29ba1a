"""Fine-tuned retrieval (viclip.finetune): Table 9's experiments compose, missing paths are named before any
work, the text position table grows without changing short texts, the loader shards and resumes, and a
fine-tuning run on generated synthetic clips raises R@1 above its starting checkpoint's and resumes to
the same weights after a crash. Models are the `tiny` architecture with random weights (no released
weights are needed or downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import viclip
from viclip.data.synthetic import make_synthetic
from viclip.data.transforms import VideoTransform
from viclip.finetune.data import FinetuneLoader, LoaderConfig, Sample
from viclip.finetune.retrieval import RetrievalTrainer, retrieval_samples
from viclip.model import ViCLIP, export_official, get_config, tokenize
from viclip.model.text import extend_positional_embedding
from viclip.model.weights import load_weights
from viclip.train import Trainer, train, trainer_class
from viclip.train.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
POSITIONS = "text_encoder.positional_embedding"
# Table 9 of the paper, per experiment: lr, epochs, max text length, drop path, paragraph mode, eval task
TABLE_9 = {
    "msrvtt": (2e-5, 7, 32, 0.3, False, "retrieval_msrvtt"),
    "didemo": (4e-5, 8, 96, 0.2, True, "retrieval_didemo"),
    "anet": (2e-5, 5, 64, 0.3, True, "retrieval_anet"),
    "lsmdc": (2e-5, 10, 64, 0.3, False, "retrieval_lsmdc"),
    "msvd": (4e-5, 20, 150, 0.2, False, "retrieval_msvd"),
}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """One process, one compute thread: on a shared 2-core machine more threads stall in OpenMP barriers."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VICLIP_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # viclip.distributed.set_cpu_threads then leaves the count alone
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(TABLE_9))
def test_every_ft_retrieval_experiment_composes_with_table_9(name):
    lr, epochs, length, drop_path, paragraph, task = TABLE_9[name]
    cfg = _compose([f"experiment=ft_retrieval_{name}", "checkpoint=/weights/ViClip-InternVid-10M-FLT.pth"])
    assert trainer_class(cfg.trainer) is RetrievalTrainer
    assert cfg.optim.lr == lr and cfg.optim.weight_decay == 0.02 and list(cfg.optim.betas) == [0.9, 0.999]
    phase = cfg.phases.finetune
    assert phase.epochs == epochs and phase.warmup_epochs == 1 and phase.lr == lr and phase.mask_ratio == 0.0
    assert cfg.phases.pretrain.epochs == 0 and cfg.phases.unmasked.epochs == 0
    o = cfg.model.overrides
    assert (o.context_length, o.drop_path_rate, o.num_frames, o.freeze_text) == (length, drop_path, 12, False)
    assert cfg.train.batch_size * 8 == 256  # per rank, on the paper's 8 GPUs
    assert tuple(cfg.data.augment.scale) == (0.5, 1.0) and cfg.data.augment.hflip == 0.5
    assert cfg.finetune.train.paragraph is paragraph and cfg.finetune.eval.task == task
    assert "protocol.num_frames=12" in cfg.finetune.eval.overrides and cfg.finetune.best_metric == "t2v_r1"


def test_train_py_prints_the_composed_job_and_msrvtt_offers_the_7k_split():
    proc = subprocess.run([sys.executable, "train.py", "experiment=ft_retrieval_msrvtt", "checkpoint=/w/v.pth",
                           "finetune.train.split=7k", "--cfg", "job", "--resolve"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainer: retrieval" in proc.stdout and "msrvtt_ret_train7k.json" in proc.stdout


def test_missing_paths_are_named_before_any_work(tmp_path):
    cfg = _compose(["experiment=ft_retrieval_didemo", f"output_root={tmp_path}", f"data_root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError) as err:
        train(cfg, RetrievalTrainer)
    msg = str(err.value)
    assert "checkpoint (set checkpoint=...)" in msg
    assert f"finetune.train.annotation={tmp_path / 'data/didemo/annotations/didemo_ret_train.json'} does not exist" \
        in msg and "finetune.train.video_root=" in msg
    assert not any(tmp_path.iterdir())  # no run directory, no process group
    (tmp_path / "v.pth").touch()
    (tmp_path / "ann.json").touch()
    present = [f"checkpoint={tmp_path / 'v.pth'}", f"finetune.train.annotation={tmp_path / 'ann.json'}",
               f"finetune.train.video_root={tmp_path}"]
    with pytest.raises(ConfigError, match="text_positions.clip_weights"):
        RetrievalTrainer(_compose(["experiment=ft_retrieval_msvd", *present, "finetune.text_positions.init=clip"]))
    with pytest.raises(ConfigError, match="unknown ViCLIPConfig field"):
        RetrievalTrainer(_compose(["experiment=ft_retrieval_msvd", *present, "+model.overrides.frames=8"]))


def test_trainer_class_names_each_trainer():
    assert trainer_class("pretrain") is Trainer and trainer_class("retrieval") is RetrievalTrainer
    with pytest.raises(ValueError, match="trainer must be one of pretrain, retrieval, recognition"):
        trainer_class("finetune")


# -- text positions ------------------------------------------------------------------------------------
def test_longer_text_table_gives_the_old_embeddings_within_32_tokens():
    """Random weights of the tiny architecture: the extension keeps short texts bit for bit."""
    torch.manual_seed(0)
    old = viclip.create_model("tiny").eval()
    sd = old.state_dict()
    sd[POSITIONS] = extend_positional_embedding(sd[POSITIONS], 48)
    new = ViCLIP(get_config("tiny", context_length=48)).eval()
    load_weights(new, sd)
    short = ["a red circle moving up", "a blue square moving to the left on a gray background"]
    with torch.no_grad():
        torch.testing.assert_close(new.encode_text(tokenize(short, context_length=48)),
                                   old.encode_text(tokenize(short, context_length=32)), rtol=0, atol=0)
        long = [" ".join(["a red circle moving up and"] * 8)]  # 48 tokens: past the old table
        assert not torch.allclose(new.encode_text(tokenize(long, context_length=48)),
                                  old.encode_text(tokenize(long, context_length=32)))
    table = sd[POSITIONS]
    assert torch.equal(table[32:], table[31:32].expand(16, -1))  # init 'last': the last trained row


def test_clip_init_takes_clips_rows_then_repeats_its_last():
    table, clip = torch.randn(32, 8), torch.randn(77, 8)
    out = extend_positional_embedding(table, 150, "clip", clip)
    assert out.shape == (150, 8) and torch.equal(out[:32], table) and torch.equal(out[32:77], clip[32:])
    assert torch.equal(out[77:], clip[76:].expand(73, -1))
    assert torch.equal(extend_positional_embedding(table, 64, "clip", clip)[32:], clip[32:64])
    with pytest.raises(ValueError, match="must exceed"):
        extend_positional_embedding(table, 32)
    with pytest.raises(ValueError, match="needs CLIP's position table"):
        extend_positional_embedding(table, 64, "clip")


# -- loader --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Generated clips (32 px): a training split (seed 1) and a validation split (seed 0), disjoint draws."""
    root = tmp_path_factory.mktemp("ft")
    train_set = make_synthetic(root / "train", n_train=1, n_eval=96, size=32, num_frames=8, seed=1)
    val_set = make_synthetic(root / "val", n_train=1, n_eval=64, size=32, num_frames=8, seed=0)
    return train_set, val_set


def _loader(samples, rank=0, world_size=1, batch_size=4):
    transform = VideoTransform(True, 32, hflip=0.5, normalize=False)
    return FinetuneLoader(samples, LoaderConfig(batch_size, num_frames=4, seed=3), transform,
                          tokenizer=lambda texts: tokenize(texts, context_length=16), rank=rank, world_size=world_size)


def test_loader_shards_an_epoch_over_ranks_and_resumes_mid_epoch(synthetic):
    samples = retrieval_samples(str(synthetic[0].retrieval_annotations), str(synthetic[0].retrieval_root), False)[:40]
    assert len({s.group for s in samples}) == 20  # two captions per video, one group per video
    ranks = [_loader(samples, r, 2) for r in range(2)]
    assert len(ranks[0]) == 5  # 40 samples / (2 ranks x 4)
    seen = [[c for b in loader for c in b["caption"]] for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == 20
    order = ranks[0].epoch_order(0)
    assert sorted(seen[0] + seen[1]) == sorted(samples[i].text for i in order)  # disjoint, the whole epoch
    assert ranks[0].epoch == 1 and ranks[0].step == 0  # moved to the next epoch by itself

    full = list(_loader(samples))
    part = _loader(samples)
    it = iter(part)
    first = [next(it), next(it)]
    state = part.state_dict()
    resumed = _loader(samples)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(first) + len(rest) == len(full) == 10
    for a, b in zip(first + rest, full):  # same clips (frames, crop, flip) and texts
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["text"], b["text"])
        assert torch.equal(a["index"], b["index"])
    other = _loader(samples, batch_size=5)
    with pytest.raises(ValueError, match="batch_size was 4 and is now 5"):
        other.load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "repeats"}  # saved before repeated augmentation existed
    again = _loader(samples)
    again.load_state_dict(older)  # it ran with one clip per video: today's default resumes it
    assert [b["caption"] for b in again] == [b["caption"] for b in rest]
    with pytest.raises(ValueError, match="the saved state has no seed"):  # a field we cannot infer: one line
        _loader(samples).load_state_dict({k: v for k, v in state.items() if k != "seed"})


def test_an_undecodable_video_is_replaced_by_the_next_and_counted(synthetic, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    good = retrieval_samples(str(synthetic[0].retrieval_annotations), str(synthetic[0].retrieval_root), False)[:7]
    loader = _loader([Sample(str(bad), 99, text="broken"), *good], batch_size=8)
    batch = next(iter(loader))
    assert "broken" not in batch["caption"] and loader.skip_counts() == {"undecodable": 1}
    assert batch["video"].shape == (8, 4, 3, 32, 32) and batch["video"].dtype == torch.uint8
    only_bad = _loader([Sample(str(bad), 0, text="broken")] * 4)
    with pytest.raises(Exception, match="10 videos in a row cannot be decoded.*broken.mp4"):
        next(iter(only_bad))


# -- fine-tuning runs ----------------------------------------------------------------------------------
def _start_checkpoint(path: Path) -> Path:
    # Random weights of the tiny architecture; temperature 0.07 as the demo's from-scratch start
    # (0.01, the official value for CLIP-initialised towers, stalls a random model at log(batch)).
    torch.manual_seed(0)
    return export_official(viclip.create_model("tiny", temp_init=0.07), path)


def _run_cfg(train_set, val_set, out: Path, ckpt: Path, *extra: str):
    return _compose(_run_overrides(train_set, val_set, out, ckpt, *extra))


def _run_overrides(train_set, val_set, out: Path, ckpt: Path, *extra: str) -> list[str]:
    """A CPU-sized ft_retrieval_msrvtt: 4 frames of 32 px, batch 16, lr 3e-3 (the paper's 2e-5 suits a
    pre-trained start, not random weights), text length 40 (past the checkpoint's 32)."""
    evals = [f"task.annotation={val_set.retrieval_annotations}", f"task.video_root={val_set.retrieval_root}",
             "device=cpu", "num_workers=0", "protocol.num_frames=4"]
    return [
        "experiment=ft_retrieval_msrvtt", f"checkpoint={ckpt}", "deepspeed=cpu_fp32", "logger=none",
        f"output_root={out}", "data.num_workers=0", "data.augment.hflip=0",  # captions say left and right
        "train.batch_size=16", "optim.lr=3e-3", "model.overrides.num_frames=4", "model.overrides.drop_path_rate=0.0",
        "model.overrides.context_length=40", f"finetune.train.annotation={train_set.retrieval_annotations}",
        f"finetune.train.video_root={train_set.retrieval_root}", "finetune.eval.task=synthetic_retrieval",
        "finetune.eval.overrides=[" + ",".join(f'"{o}"' for o in evals) + "]", *extra]


def _val_records(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "val/t2v_r1" in r]


def test_finetuning_raises_r1_above_the_starting_checkpoints(synthetic, tmp_path):
    """96 training videos (192 captions), 32 validation videos; 6 epochs, evaluated at the start and after each."""
    train_set = synthetic[0]
    ckpt = _start_checkpoint(tmp_path / "start.pth")
    small_val = make_synthetic(tmp_path / "val32", n_train=1, n_eval=32, size=32, num_frames=8, seed=0)
    cfg = _run_cfg(train_set, small_val, tmp_path / "runs", ckpt, "run_name=ft", "phases.finetune.epochs=6",
                   "finetune.eval.at_start=true")
    result = train(cfg, trainer_class(cfg.trainer))
    run = tmp_path / "runs" / "ft"
    recs = _val_records(run)
    assert [r["epoch"] for r in recs] == list(range(7))
    start, best = recs[0]["val/t2v_r1"], max(r["val/t2v_r1"] for r in recs[1:])
    # chance is 100/32 = 3.1 %; the random start scores about that, fine-tuning several times more
    assert best >= start + 9.0 and best >= 12.0, [r["val/t2v_r1"] for r in recs]
    last = recs[-1]
    assert (last["val/t2v_r1"] + last["val/v2t_r1"]) / 2 >= (start + recs[0]["val/v2t_r1"]) / 2 + 5.0
    # the kept weights are the best epoch's, exported in the official format and evaluated as such
    assert result.exports == {"finetune": str(run / "weights" / "best.pth")}
    assert last["best"] == best and recs[last["best_epoch"]]["val/t2v_r1"] == best
    best_sd = torch.load(run / "weights" / "best.pth", weights_only=True)["model"]
    text_weight = "text_encoder.transformer.resblocks.0.attn.in_proj_weight"
    assert best_sd[POSITIONS].shape[0] == 40  # the grown table, saved with its config
    assert not best_sd[text_weight].equal(torch.load(ckpt, weights_only=True)["model"][text_weight])  # text trained
    epoch_results = sorted((run / "eval").glob("epoch_*/*.json"))
    assert len(epoch_results) == 7


class _Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_to_the_same_weights_and_history(synthetic, tmp_path, monkeypatch):
    """Killed right after epoch 1's evaluation and checkpoint, resume=auto ends where an uninterrupted run does."""
    from viclip.finetune.base import FinetuneTrainer

    val_set = synthetic[1]
    small = make_synthetic(tmp_path / "train32", n_train=1, n_eval=32, size=32, num_frames=8, seed=1)
    ckpt = _start_checkpoint(tmp_path / "start.pth")
    common = ["phases.finetune.epochs=2", "train.ckpt_every=100"]
    train(_run_cfg(small, val_set, tmp_path / "runs", ckpt, "run_name=full", *common), RetrievalTrainer)

    end_epoch = FinetuneTrainer.end_epoch

    def crash_after_first_epoch(self, phase, total):
        end_epoch(self, phase, total)
        if self.state.step == self.steps_per_epoch:
            raise _Crash("killed after epoch 1")

    monkeypatch.setattr(FinetuneTrainer, "end_epoch", crash_after_first_epoch)
    with pytest.raises(_Crash):
        train(_run_cfg(small, val_set, tmp_path / "runs", ckpt, "run_name=resumed", *common), RetrievalTrainer)
    monkeypatch.setattr(FinetuneTrainer, "end_epoch", end_epoch)
    assert [r["epoch"] for r in _val_records(tmp_path / "runs" / "resumed")] == [1]
    train(_run_cfg(small, val_set, tmp_path / "runs", ckpt, "run_name=resumed", "resume=auto", *common),
          RetrievalTrainer)

    full, resumed = tmp_path / "runs" / "full", tmp_path / "runs" / "resumed"
    strip = [{k: v for k, v in r.items() if k != "time"} for r in _val_records(full)]
    assert [{k: v for k, v in r.items() if k != "time"} for r in _val_records(resumed)] == strip
    for name in ("last.pth", "weights/best.pth"):
        a = torch.load(full / name, weights_only=True)["model"]
        b = torch.load(resumed / name, weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_two_rank_run_evaluates_on_both_ranks_and_keeps_the_best(synthetic, tmp_path):
    """torchrun, 2 gloo ranks through train.py: training and the per-epoch evaluation split over both ranks."""
    import os

    train_set, val_set = synthetic
    ckpt = _start_checkpoint(tmp_path / "start.pth")
    overrides = _run_overrides(train_set, val_set, tmp_path / "runs", ckpt, "run_name=two", "phases.finetune.epochs=1",
                               "train.batch_size=8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICLIP_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, check=False,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "two"
    assert "2 rank(s) x 8 clips" in proc.stdout and [r["epoch"] for r in _val_records(run)] == [1]
    results = json.loads(next((run / "eval" / "epoch_001").glob("*.json")).read_text())
    assert results["world_size"] == 2 and results["data"]["evaluated"] == 64
    assert (run / "weights" / "best.pth").is_file()


# UMT's multi_modality/exp/finetuning/ret_*/l16_*.py: lr, epochs, warm-up, max text length, drop path
UMT = {
    "didemo": (4e-5, 5, 1, 64, 0.2),
    "anet": (4e-5, 20, 1, 150, 0.2),
    "lsmdc": (2e-5, 8, 1, 96, 0.2),
    "msvd": (1e-5, 3, 0, 64, 0.3),
}


@pytest.mark.parametrize("name", sorted(UMT))
def test_umt_variant_of_each_disagreeing_set_composes_with_umts_values(name):
    lr, epochs, warmup, length, drop_path = UMT[name]
    cfg = _compose([f"experiment=ft_retrieval_{name}_umt", "checkpoint=/weights/ViClip-InternVid-10M-FLT.pth"])
    phase, o = cfg.phases.finetune, cfg.model.overrides
    assert (cfg.optim.lr, phase.lr, phase.epochs, phase.warmup_epochs, o.context_length, o.drop_path_rate) == (
        lr, lr, epochs, warmup, length, drop_path)
    table_9 = TABLE_9[name]
    assert (lr, epochs, length, drop_path) != (table_9[0], table_9[1], table_9[2], table_9[3])  # a real variant
    assert cfg.finetune.train.paragraph is table_9[4] and cfg.finetune.eval.task == table_9[5]
    assert cfg.run_name == f"ft_retrieval_{name}_umt" and o.num_frames == 12


def test_table_9s_msvd_column_is_umts_activitynet_config():
    assert TABLE_9["msvd"][:4] == (UMT["anet"][0], UMT["anet"][1], UMT["anet"][3], UMT["anet"][4])


def test_text_positions_interpolate_all_trained_rows_by_default(tmp_path):
    from types import SimpleNamespace

    torch.manual_seed(0)
    ckpt = export_official(viclip.create_model("tiny"), tmp_path / "tiny.pth")
    trained = torch.load(ckpt, weights_only=True)["model"][POSITIONS]
    (tmp_path / "ann.json").write_text("[]")
    present = [f"checkpoint={ckpt}", f"finetune.train.annotation={tmp_path / 'ann.json'}",
               f"finetune.train.video_root={tmp_path}", "model.overrides.context_length=48"]

    def grown(*overrides):
        trainer = RetrievalTrainer(_compose(["experiment=ft_retrieval_msrvtt", *present, *overrides]))
        trainer.info = SimpleNamespace(is_main=False)
        return trainer.pretrained().state_dict()[POSITIONS]

    official = torch.nn.functional.interpolate(trained.T[None], size=48, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(grown(), official)  # the official loader's rule: every row moves
    assert not torch.equal(grown()[:32], trained)
    last = grown("finetune.text_positions.init=last")  # the option: trained rows kept, the last one repeated
    assert torch.equal(last[:32], trained) and torch.equal(last[32:], trained[31:].expand(16, -1))


def test_didemo_trains_on_the_first_30_seconds_as_umt():
    for name in ("ft_retrieval_didemo", "ft_retrieval_didemo_umt"):
        assert _compose([f"experiment={name}", "checkpoint=/w/v.pth"]).finetune.train.max_seconds == 30
    assert _compose(["experiment=ft_retrieval_msrvtt", "checkpoint=/w/v.pth"]).finetune.train.max_seconds is None


def test_didemo_is_tested_on_the_first_30_seconds_too():
    from viclip.eval.runner import variant_suffix, video_protocol

    def protocol(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=list(overrides))
        return video_protocol(cfg), variant_suffix(cfg, "retrieval")

    didemo, suffix = protocol("task=retrieval_didemo")
    assert didemo.max_seconds == 30 and suffix == ""  # the task's own: no suffix
    assert protocol("task=retrieval_msrvtt")[0].max_seconds is None
    whole, suffix = protocol("task=retrieval_didemo", "protocol.max_seconds=0")
    assert whole.max_seconds == 0 and "s0" in suffix  # the whole video, named in the results
