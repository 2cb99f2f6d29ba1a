"""wandb and metrics.jsonl across a requeue, read back from wandb's offline run files.

What this proves: after a resume from a checkpoint older than the last logged step, the new offline
run segment asks wandb to rewind the run to the checkpoint's step (its run record carries the branch
point that ``wandb sync`` sends), its history holds every redone step (none dropped by the client),
the launch config (resolved config, git commit, command line) is in the first segment only, and
metrics.jsonl holds each step once. What it cannot prove offline: that a W&B server applies the
rewind (a preview feature of the service).
"""

import json
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from viclip.train.logger import MetricsLogger, launch_info

BLOCK = 32768  # wandb's .wandb file: a LevelDB-style log of 32 KiB blocks, 7-byte chunk headers
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb log"
    pos, chunks, records = 7, [], []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def segment(run_dir: Path, index: int) -> tuple:
    """(run record, config keys, logged steps) of the ``index``-th offline segment of the run.

    ``run.finish()`` returns before wandb's service has flushed the segment's file (seen in CI: a file
    without its run record); ``wandb.teardown()`` waits for the service to close every writer, as the
    exit of a training process does.
    """
    wandb.teardown()
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    records = wandb_records(files[index])
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds, f"{files[index]} holds no run record: {kinds}"
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    steps = [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"]
    return run, {item.key: json.loads(item.value_json) for item in run.config.update}, steps


def record(step: int) -> dict:
    return {"phase": "pretrain", "step": step, "steps": 10, "global_step": step, "loss": 1.0 / step, "lr": 1e-3,
            "temp": 0.01, "clips_per_s": 5.0, "data_wait": 0.1, "skipped_samples": 0, "nonfinite_steps": 0}


def logger(run_dir: Path, start_step: int) -> MetricsLogger:
    """A rank-0 logger; each in a new second, as wandb names an offline segment by its start second."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)
    return MetricsLogger(run_dir, "wandb", "viclip_test", {"model": {"name": "tiny"}, "seed": 0},
                         {"project": "viclip-test", "mode": "offline"}, enabled=True, start_step=start_step,
                         console=False)


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_requeued_run_rewinds_wandb_and_the_log_to_the_checkpoint(tmp_path):
    first = logger(tmp_path, 0)
    for step in range(1, 11):  # logged up to step 10, then killed; the newest checkpoint is at step 6
        first.log(record(step))
    first.close()

    second = logger(tmp_path, 6)
    assert second._wandb.starting_step == 7  # rewound: the next step logged is the one after the checkpoint
    for step in range(7, 9):
        second.log(record(step))
    second.close()

    run, config, steps = segment(tmp_path, 0)
    assert steps == list(range(1, 11)) and not run.HasField("branch_point")
    assert config["seed"] == 0 and config["model"] == {"name": "tiny"}  # the resolved config
    assert config["launch"]["command"] == launch_info()["command"] and len(config["launch"]["git_commit"]) == 40
    run, config, steps = segment(tmp_path, 1)
    assert (run.branch_point.run, run.branch_point.metric, run.branch_point.value) == ("viclip_test", "_step", 6)
    assert steps == [7, 8]  # the redone steps, none dropped
    assert "launch" not in config and "seed" not in config  # logged once, at the start

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_resume_at_the_last_logged_step_is_a_plain_resume(tmp_path):
    first = logger(tmp_path, 0)
    for step in (1, 2):
        first.log(record(step))
    first.close()
    logger(tmp_path, 2).close()  # a checkpoint at the last logged step: nothing to rewind
    run, config, _ = segment(tmp_path, 1)
    assert not run.HasField("branch_point") and "launch" not in config


def test_a_server_that_refuses_the_rewind_gets_a_plain_resume_and_a_warning(tmp_path, monkeypatch, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(record(s)) + "\n" for s in range(1, 5)))
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if "resume_from" in kwargs:
            raise wandb.errors.CommError("rewind is not enabled for this entity")
    monkeypatch.setattr(wandb, "init", init)
    logger(tmp_path, 2)
    assert calls[0]["resume_from"] == "viclip_test?_step=2"
    assert calls[1]["id"] == "viclip_test" and calls[1]["resume"] == "allow" and calls[1]["config"] is None
    assert "drops the redone steps 3..4" in capsys.readouterr().out
    assert [json.loads(s)["global_step"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_launch_info_names_the_commit_and_the_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "experiment=demo", "run_name=a b"])
    info = launch_info()
    assert info["command"] == f"{shlex.quote(sys.executable)} train.py experiment=demo 'run_name=a b'"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert info["git_commit"] == head and isinstance(info["git_dirty"], bool)  # the tests run in the checkout
