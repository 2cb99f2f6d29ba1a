"""A user error ends every command with one line naming the path, field or column, exit status != 0, no
traceback; ``--debug`` or ``HYDRA_FULL_ERROR=1`` gives the traceback. train.py / eval.py run as subprocesses
(Hydra's own error report is what the one line replaces); the tools run in-process on their real parsers."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from viclip.commands import build_subset, curate, one_line_errors
from viclip.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_missing_checkpoint_stops_eval_with_one_line_or_a_traceback_under_debug(tmp_path):
    missing = tmp_path / "absent.safetensors"
    line = _one_line(_run("eval.py", f"checkpoint={missing}", f"output_root={tmp_path}"))
    assert line.startswith("eval.py: error: checkpoint=") and str(missing) in line
    debug = _run("eval.py", "--debug", f"checkpoint={missing}", f"output_root={tmp_path}")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    assert str(missing) in debug.stderr  # Hydra took the command line without --debug: the same error


def test_unset_field_stops_train_with_one_line_naming_it_and_how_to_set_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICLIP_")}
    line = _one_line(_run("train.py", f"output_root={tmp_path}", env=env))
    assert line.startswith("train.py: error: required config field(s) not set:")
    assert "model.clip_weights=..." in line and "VICLIP_CLIP_L14" in line
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # stopped before any work (Hydra made the run dir)


@pytest.fixture
def argv(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # off; and --debug's "1" is undone after the test

    def set_argv(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", list(args))
    return set_argv


def test_missing_column_stops_a_stage_with_one_line(tmp_path, argv, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # --debug below sets it: restored after the test
    table = tmp_path / "clips.parquet"
    pq.write_table(pa.table({"clip_id": ["a", "b"], "status": ["kept", "kept"], "duration": [1.0, 2.0]}), table)
    argv("viclip-curate", "build-subset", "--input", str(table), "--rule", "aes", "--out", str(tmp_path / "s.parquet"))
    with pytest.raises(SystemExit) as stop:
        curate.main()
    assert stop.value.code == (f"viclip-curate build-subset: error: {table}: subset rule 'aes' needs columns "
                               "['aesthetic']")

    args = ["--input", str(table), "--rule", "aes", "--out", str(tmp_path / "s.parquet")]
    argv("build_subset.py", "--debug", *args)
    with pytest.raises(DataError, match="needs columns"):  # the traceback: the exception itself
        build_subset.main()
    assert sys.argv == ["build_subset.py", *args]  # taken off before argparse, which does not know it
    assert os.environ["HYDRA_FULL_ERROR"] == "1"  # Hydra's switch set too: one meaning of debug


def test_error_lines_name_the_path_or_key_and_bugs_keep_their_traceback(tmp_path, argv):
    argv("tool.py")

    @one_line_errors
    def read(path):
        return open(path).read()

    with pytest.raises(SystemExit) as stop:
        read(tmp_path / "nope.txt")
    assert stop.value.code == f"tool.py: error: {tmp_path / 'nope.txt'}: No such file or directory"

    @one_line_errors
    def field(cfg):
        return cfg.task.annotation

    with pytest.raises(SystemExit) as stop:
        field(OmegaConf.create({"task": {"annotation": "???"}}))
    assert stop.value.code == "tool.py: error: Missing mandatory value: task.annotation (set task.annotation=... " \
                              "on the command line)"

    @one_line_errors
    def column(row):
        raise DataError("clips.parquet: column 'caption' is missing")

    with pytest.raises(SystemExit) as stop:
        column({})
    assert stop.value.code == "tool.py: error: clips.parquet: column 'caption' is missing"

    @one_line_errors
    def bug():
        raise RuntimeError("an internal invariant broke")

    with pytest.raises(RuntimeError):  # not a user error: the traceback stays
        bug()

    @one_line_errors
    def our_key_error(batch):
        return batch["video_id"]  # fine-tuning batches had no video_id: a bug, not the user's input

    with pytest.raises(KeyError, match="video_id"):  # a KeyError or ValueError of our own code is not hidden
        our_key_error({})

    @one_line_errors
    def our_value_error():
        return int("not a number")

    with pytest.raises(ValueError, match="invalid literal"):
        our_value_error()
