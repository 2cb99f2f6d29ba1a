"""Training trust: a distributed run's final evaluation, checkpoints that cannot run code on resume, a
damaged checkpoint named in one line, a run directory that is ours and held by one run, and the
config errors of the training command. Runs are a few steps of the `tiny` model on 32 px clips."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_trainer import SMALL, _compose, _env

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
QUICK = [*SMALL, "phases.pretrain.epochs=1", "phases.unmasked.epochs=1", "train.steps_per_epoch=2",
         "train.ckpt_every=100"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def test_final_eval_of_a_two_rank_torchrun_run_ends(tmp_path, data_root):
    """The demo's final evaluation after 2 gloo ranks trained: it used to wait 60 min for ranks that had left."""
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", "experiment=demo",
           *QUICK, "run_name=final_eval", "resume=null",
           "model.overrides={width: 32, layers: 1, heads: 2, embed_dim: 32, text_width: 32, context_length: 16}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(data_root, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too
        pytest.fail(f"the run did not end in 300 s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    results = list((tmp_path / "final_eval" / "eval").rglob("*.json"))
    assert results, sorted(p.name for p in (tmp_path / "final_eval").rglob("*"))


def _clean_env(monkeypatch, data_root: Path) -> None:
    monkeypatch.setenv("VICLIP_DATA", str(data_root))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    """A finished run's checkpoint directory (both phases, 4 steps)."""
    from viclip.train import train

    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp, data_root)
        train(_compose([*QUICK, f"output_root={out}", "run_name=source"]))
    return out / "source" / "checkpoints" / "step_00000004"


class Plant:
    """A pickle that creates ``marker`` when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _resume(tmp_path: Path, ckpt: Path, run_name: str = "resumed"):
    from viclip.train import train

    return train(_compose([*QUICK, f"output_root={tmp_path}", f"run_name={run_name}", f"resume={ckpt}"]))


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                  "rank00000.pt"])
def test_a_planted_pickle_in_any_checkpoint_file_never_runs(tmp_path, data_root, finished_run, monkeypatch, name):
    from viclip.errors import UnsafeFileError

    _clean_env(monkeypatch, data_root)
    ckpt = tmp_path / "ckpts" / finished_run.name
    shutil.copytree(finished_run, ckpt)
    marker = tmp_path / "pwned"
    torch.save({"module": Plant(marker)}, ckpt / name)
    with pytest.raises(UnsafeFileError) as err:
        _resume(tmp_path, ckpt)
    assert not marker.exists()
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt / name) in msg and "posix.system" in msg and "weights_only" not in msg


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_rank_file_is_named_in_one_line(tmp_path, data_root, finished_run, monkeypatch, damage):
    from viclip.errors import DataError, UnsafeFileError

    _clean_env(monkeypatch, data_root)
    ckpt = tmp_path / "ckpts" / finished_run.name
    shutil.copytree(finished_run, ckpt)
    rank_file = ckpt / "rank00000.pt"
    if damage == "truncate":
        rank_file.write_bytes(rank_file.read_bytes()[:100])
    else:
        rank_file.unlink()
    with pytest.raises(DataError) as err:
        _resume(tmp_path, ckpt)
    msg = str(err.value)
    assert not isinstance(err.value, UnsafeFileError) and "\n" not in msg and "weights_only" not in msg
    assert msg.startswith(f"{rank_file}: {'truncated or corrupt' if damage == 'truncate' else 'missing'}")


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(tmp_path, data_root, monkeypatch):
    from viclip.errors import OutputError
    from viclip.train import train

    _clean_env(monkeypatch, data_root)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "config.yaml").write_text("mine: 1\n")
    (shards / "metrics.jsonl").write_text('{"theirs": 1}\n')
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    with pytest.raises(OutputError, match=f"output_dir={shards} holds files that no training run of ours wrote"):
        train(_compose([*QUICK, f"output_dir={shards}"]))
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder(tmp_path, data_root, monkeypatch):
    from viclip.errors import OutputError
    from viclip.train import train
    from viclip.train.rundir import claim

    _clean_env(monkeypatch, data_root)
    run_dir = tmp_path / "busy"
    lock = claim(run_dir)  # as the first run would: marked ours, locked by this process
    try:
        with pytest.raises(OutputError, match=rf"output_dir={run_dir}: another training run \(pid {os.getpid()}\)"):
            train(_compose([*QUICK, f"output_dir={run_dir}"]))
    finally:
        lock.release()
    assert sorted(p.name for p in run_dir.iterdir()) == [".viclip-run", ".viclip-run.lock"]


def test_same_video_is_refused_for_fine_tuning_naming_the_field(tmp_path):
    from viclip.errors import ConfigError
    from viclip.train import trainer_class

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    cfg = _compose(["experiment=ft_retrieval_demo", f"checkpoint={weights}", f"finetune.train.annotation={weights}",
                    f"finetune.train.video_root={tmp_path}", "loss.same_video=ignore"])
    with pytest.raises(ConfigError, match="loss.same_video=ignore needs each clip's source video"):
        trainer_class(cfg.trainer)(cfg)


@pytest.mark.parametrize(("config", "key", "expected"), [("train", "train.batchsize", "train.batch_size"),
                                                         ("eval", "num_worker", "num_workers")])
def test_a_misspelled_key_gets_one_line_with_the_closest_keys(monkeypatch, config, key, expected):
    from viclip.commands.config_keys import check_override_keys

    monkeypatch.setattr(sys, "argv", [f"{config}.py"])
    with pytest.raises(SystemExit) as end:
        check_override_keys("viclip.configs", config, [f"{key}=4"])
    assert str(end.value).startswith(f"{config}.py: error: {key} is not a config key; did you mean {expected}")
    check_override_keys("viclip.configs", config, [f"{expected}=4"])  # the right key passes


def test_a_run_begun_before_the_marker_is_still_ours(tmp_path):
    from viclip.train.rundir import MARKER, claim

    ckpt = tmp_path / "old_run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "rank00000.pt").write_bytes(b"")
    claim(tmp_path / "old_run").release()  # a requeued job after an upgrade resumes its run
    assert (tmp_path / "old_run" / MARKER).is_file()


def test_rank_files_must_match_the_ranks_that_wrote_the_checkpoint(tmp_path):
    from viclip.errors import ConfigError, DataError
    from viclip.train.checkpoint import Checkpointer

    ckpt = tmp_path / "step_00000008"
    ckpt.mkdir()
    for r in (0, 1):  # two data-parallel ranks wrote it (bf16 runs prefix the optimizer files)
        (ckpt / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (ckpt / "rank00000.pt").write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{ckpt / 'rank00001.pt'}: missing from the checkpoint"):
        Checkpointer(tmp_path, keep=1, rank=0, world_size=2).check_rank_files(ckpt)
    (ckpt / "rank00001.pt").write_bytes(b"")
    Checkpointer(tmp_path, keep=1, rank=0, world_size=2).check_rank_files(ckpt)
    with pytest.raises(ConfigError, match=r"was written by 2 ranks; resuming with 1 .* launch 2 ranks"):
        Checkpointer(tmp_path, keep=1, rank=0, world_size=1).check_rank_files(ckpt)
