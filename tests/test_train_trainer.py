"""train.py end to end on tiny synthetic shards: config errors, a 2-rank DeepSpeed run, both phases,
kill -9 and resume. Every run here is a few steps of the `tiny` model on 32 px clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# A small run: 96 training clips of 32 px, batch 8 per rank, phases of 2 and 1 epochs.
SMALL = [
    "model=tiny", "data=synthetic", "optim=adamw_demo", "deepspeed=cpu_fp32", "logger=none",
    "data.generate.n_train=96", "data.generate.n_eval=4", "data.generate.size=32", "data.generate.shard_size=32",
    "data.num_workers=1", "data.shuffle_buffer=16", "train.batch_size=8", "train.log_every=1",
    "phases.pretrain.epochs=2", "phases.pretrain.warmup_epochs=0.5", "phases.pretrain.mask_ratio=0.5",
    "phases.unmasked.epochs=1", "phases.unmasked.lr=1e-4", "phases.unmasked.warmup_epochs=0.25",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _env(data_root: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICLIP_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(VICLIP_DATA=str(data_root), VICLIP_OUTPUT=str(out), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    return env


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_missing_paths_are_named_before_any_work(tmp_path, monkeypatch):
    from viclip.errors import ConfigError
    from viclip.train import train

    for var in ("VICLIP_CLIP_L14", "VICLIP_SHARDS_INTERNVID_10M_FLT"):
        monkeypatch.delenv(var, raising=False)
    cfg = _compose(["experiment=viclip_l14_internvid_10m_flt", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert "model.clip_weights" in msg and "VICLIP_CLIP_L14" in msg
    assert "data.sources.internvid_10m_flt.shards" in msg and "VICLIP_SHARDS_INTERNVID_10M_FLT" in msg
    assert not any(tmp_path.iterdir())  # nothing created: no run directory, no process group

    monkeypatch.setenv("VICLIP_CLIP_L14", "/weights/clip_l14.pt")
    cfg = _compose(["experiment=viclip_l14_internvid_10m_flt", "data.sources.internvid_10m_flt.shards='/x/{0..9}.tar'"])
    from viclip.train.config import validate_train_config

    validate_train_config(cfg)  # both set: accepted
    with pytest.raises(ConfigError, match="phases.pretrain.mask_ratio"):
        validate_train_config(_compose(["experiment=demo", "phases.pretrain.mask_ratio=1.5"]))
    with pytest.raises(ConfigError, match="loss.same_video"):
        validate_train_config(_compose(["experiment=demo", "loss.same_video=maybe"]))


def test_unknown_data_name_fails_at_compose_naming_the_group(tmp_path, data_root):
    proc = subprocess.run([PY, "train.py", "data=internvid_11m"], cwd=REPO, env=_env(data_root, tmp_path),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr[-2000:]  # our one line, not Hydra's report
    assert "data=internvid_11m is not a config of data/" in line and "internvid_10m_flt" in line  # lists the choices
    assert not any(tmp_path.iterdir())


def test_two_rank_deepspeed_run_lowers_loss_through_both_phases(tmp_path, data_root):
    """torchrun, 2 gloo ranks: the loss falls, the phases switch masking and lr, weights are exported."""
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *SMALL,
           "run_name=two_ranks", "phases.pretrain.epochs=5", "train.ckpt_every=100"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(data_root, tmp_path), capture_output=True, text=True,
                          check=False, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "two_ranks"
    recs = _records(run)
    pre = [r for r in recs if r["phase"] == "pretrain"]
    post = [r for r in recs if r["phase"] == "unmasked"]
    # 96 clips / (8 x 2 ranks) = 6 steps per epoch: 30 masked steps, then 6 unmasked ones
    assert [r["step"] for r in pre] == list(range(1, 31)) and [r["step"] for r in post] == list(range(1, 7))
    assert {r["mask_ratio"] for r in pre} == {0.5} and {r["mask_ratio"] for r in post} == {0.0}
    first, last = sum(r["loss"] for r in pre[:3]) / 3, sum(r["loss"] for r in recs[-3:]) / 3
    assert last < first - 0.3, (first, last)
    assert max(r["lr"] for r in pre) == pytest.approx(1e-3) and max(r["lr"] for r in post) == pytest.approx(1e-4)
    assert "[pretrain] step 30/30" in proc.stdout and "[unmasked] step 6/6" in proc.stdout
    for phase in ("pretrain", "unmasked"):
        sd = _weights(run / "weights" / f"{phase}.pth")
        assert sd["temp"].shape == () and "vision_encoder.temporal_positional_embedding" in sd
    assert (run / "config.yaml").read_text().count("run_name: two_ranks") == 1


def test_phases_set_masking_and_lr_on_the_model_and_optimizer(tmp_path, data_root, monkeypatch):
    """In-process run (1 rank): what the model and optimizer actually receive, call by call."""
    from viclip.model import ViCLIP
    from viclip.train import trainer
    from viclip.train.optim import WarmupCosine

    monkeypatch.setenv("VICLIP_DATA", str(data_root))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    seen_masks, seen_lrs = [], []
    forward = ViCLIP.forward

    def spy_forward(self, video, tokens, mask_ratio=0.0):
        seen_masks.append(mask_ratio)
        return forward(self, video, tokens, mask_ratio)

    set_lr = trainer.set_lr

    def spy_set_lr(optimizer, lr):
        seen_lrs.append(lr)
        set_lr(optimizer, lr)
        assert all(g["lr"] == lr for g in optimizer.param_groups)

    monkeypatch.setattr(ViCLIP, "forward", spy_forward)
    monkeypatch.setattr(trainer, "set_lr", spy_set_lr)
    cfg = _compose([*SMALL, f"output_root={tmp_path}", "run_name=spy", "phases.pretrain.epochs=1",
                    "phases.pretrain.warmup_epochs=0.5", "train.steps_per_epoch=4"])
    result = trainer.train(cfg)
    # 4 steps per epoch (steps_per_epoch): pretrain 1 epoch, unmasked 1 epoch
    assert seen_masks == [0.5] * 4 + [0.0] * 4
    pre, post = WarmupCosine(1e-3, 4, 2, 0.01), WarmupCosine(1e-4, 4, 1, 0.01)
    assert seen_lrs == pytest.approx([pre(i) for i in range(4)] + [post(i) for i in range(4)])
    assert set(result.exports) == {"pretrain", "unmasked"}


def test_subclass_hooks_shape_the_optimizer_and_see_every_epoch_end(tmp_path, data_root, monkeypatch):
    """A subclass's param_groups reach the optimizer (a group's lr_scale multiplies the scheduled lr, as
    timm's layer-decay groups need) and end_epoch runs after each epoch's last step."""
    from viclip.train import trainer
    from viclip.train.optim import param_groups

    monkeypatch.setenv("VICLIP_DATA", str(data_root))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    seen: list[tuple[int, dict[str, float]]] = []

    class Scaled(trainer.Trainer):
        def param_groups(self, model):
            groups = param_groups(model, 0.2)
            groups[0]["lr_scale"] = 0.25  # the decayed weights at a quarter of the schedule
            return groups

        def end_epoch(self, phase, total):
            seen.append((self.state.step, {g["name"]: g["lr"] for g in self.optimizer.param_groups}))

    cfg = _compose([*SMALL, f"output_root={tmp_path}", "run_name=hooks", "phases.pretrain.epochs=2",
                    "phases.unmasked.epochs=0", "phases.unmasked.warmup_epochs=0", "train.steps_per_epoch=3"])
    trainer.train(cfg, Scaled)
    assert [step for step, _ in seen] == [3, 6]
    for _, lrs in seen:
        assert lrs["decay"] == pytest.approx(0.25 * lrs["no_decay"]) and lrs["no_decay"] > 0


def test_nonfinite_losses_are_skipped_counted_and_abort_after_k_in_a_row(tmp_path, data_root, monkeypatch):
    from viclip.train import trainer
    from viclip.train.loss import ClipLoss

    monkeypatch.setenv("VICLIP_DATA", str(data_root))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    forward, calls = ClipLoss.forward, [0]
    pattern = [False, True, False, True, True, False, True, True, True]  # True: this call's loss is NaN

    def flaky(self, *args, **kwargs):
        bad = calls[0] < len(pattern) and pattern[calls[0]]
        calls[0] += 1
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if bad else loss

    monkeypatch.setattr(ClipLoss, "forward", flaky)
    cfg = _compose([*SMALL, f"output_root={tmp_path}", "run_name=nan", "train.max_bad_steps=3",
                    "train.steps_per_epoch=4"])
    with pytest.raises(trainer.NonFiniteLossError, match=r"3 non-finite losses in a row at pretrain step 3"):
        trainer.train(cfg)
    recs = _records(tmp_path / "nan")
    # optimizer steps 1-3 used the finite micro-batches 1, 3 and 6; NaN ones were skipped, not stepped
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert [r["nonfinite_steps"] for r in recs] == [0, 1, 3]
    assert all(r["loss"] is not None for r in recs)


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([PY, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_during_save(proc: subprocess.Popen, ckpt_dir: Path, after_tags: int, timeout: float = 300) -> None:
    """SIGKILL the run's process group as soon as a checkpoint is being written (a ``.tmp-`` directory
    exists) after ``after_tags`` complete ones; fails the test if no such save is seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}")
        names = [p.name for p in ckpt_dir.iterdir()] if ckpt_dir.is_dir() else []
        done = [n for n in names if n.startswith("step_")]
        if len(done) >= after_tags and any(n.startswith(".tmp-") for n in names):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.002)
    raise AssertionError("no checkpoint save seen in time")


def test_kill_minus_nine_and_resume_ends_with_the_same_weights(tmp_path, data_root):
    args = [*SMALL, "train.ckpt_every=2", "train.keep_checkpoints=2", "phases.pretrain.epochs=2"]
    env = _env(data_root, tmp_path)
    ref = subprocess.run([PY, "train.py", *args, "run_name=straight"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=False, timeout=300)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    run_args = [*args, "run_name=killed", "resume=auto"]
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    for after in (0, 2):  # the first save of the run, then a later one
        _kill_during_save(_start(run_args, env), ckpt_dir, after)
    assert any(n.startswith(".tmp-") for n in os.listdir(ckpt_dir))  # killed mid-save: a partial checkpoint
    final = subprocess.run([PY, "train.py", *run_args], cwd=REPO, env=env, capture_output=True, text=True,
                           check=False, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "resumed from" in final.stdout
    assert not any(n.startswith((".tmp-", ".trash-")) for n in os.listdir(ckpt_dir))
    assert len([n for n in os.listdir(ckpt_dir) if n.startswith("step_")]) == 2  # keep_checkpoints
    steps = [r["global_step"] for r in _records(tmp_path / "killed")]
    assert steps == [r["global_step"] for r in _records(tmp_path / "straight")]  # redone steps logged once

    for phase in ("pretrain", "unmasked"):
        a = _weights(tmp_path / "straight" / "weights" / f"{phase}.pth")
        b = _weights(tmp_path / "killed" / "weights" / f"{phase}.pth")
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{phase}: {len(diff)} tensors differ after kill/resume, e.g. {diff[:3]}"
