"""viclip.progress: log lines off a terminal, nothing when disabled, a bar on a terminal, ETA arithmetic."""

import io

import pytest
from tqdm import tqdm

from viclip.progress import LogProgress, eta_seconds, format_duration, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_is_the_rest_at_the_mean_rate():
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert eta_seconds(100, 100, 10.0) == 0.0
    assert eta_seconds(120, 100, 10.0) == 0.0  # overshoot (a retried item counted twice) is never negative
    assert eta_seconds(0, 100, 10.0) is None and eta_seconds(5, None, 10.0) is None


def test_durations_read_as_clock_times():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(59) == "0:00:59"
    assert format_duration(2 * 86400 + 61) == "2 days, 0:01:01"
    assert format_duration(None) == "?"


def test_not_a_terminal_gives_log_lines_with_rate_and_eta():
    out = io.StringIO()
    bar = progress(total=4, desc="embed", unit="video", file=out, interval=0.0)
    assert isinstance(bar, LogProgress)
    for i in range(4):
        bar.set_postfix({"failed": i})
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("embed: 1/4 video (25.0%) | ") and "video/s" in lines[0] and "ETA " in lines[0]
    assert lines[-1].startswith("embed: 4/4 video (100.0%)") and "ETA 0:00:00" in lines[-1]
    assert len(lines) == 4 and lines[-1].endswith("| failed 3") and "\r" not in out.getvalue()


def test_log_lines_wait_for_the_interval_and_a_short_job_stays_quiet():
    out = io.StringIO()
    for _ in progress(range(1000), desc="rows", file=out, interval=3600.0):
        pass
    assert out.getvalue() == ""


def test_disabled_shows_nothing():
    for file in (io.StringIO(), Terminal()):
        bar = progress(range(3), total=3, desc="quiet", enabled=False, file=file, interval=0.0)
        assert list(bar) == [0, 1, 2]
        bar.close()
        assert file.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    file = Terminal()
    bar = progress(total=2, desc="bar", file=file)
    assert isinstance(bar, tqdm)
    bar.update(2)
    bar.close()
    assert "bar" in file.getvalue() and "2/2" in file.getvalue()


def test_training_eta_prices_later_phases_by_their_flops():
    from viclip.train.meters import time_left

    assert time_left(None, 100) == (None, None)  # no step timed yet
    phase, run = time_left(2.0, 100, later_steps=50 * 4.0)  # 50 unmasked steps, each 4 masked steps' FLOPs
    assert phase == pytest.approx(50.0) and run == pytest.approx(150.0)


def test_step_clock_rate_is_per_phase(monkeypatch):
    from viclip.train import meters

    now = [100.0]
    monkeypatch.setattr(meters.time, "monotonic", lambda: now[0])
    clock = meters.StepClock(window=4)
    assert clock.steps_per_s() is None
    for _ in range(10):
        now[0] += 0.5
        clock.tick()
    assert clock.steps_per_s() == pytest.approx(2.0) and clock.elapsed() == pytest.approx(5.0)
    clock.new_phase()
    now[0] += 1.0
    clock.tick()
    assert clock.steps_per_s() == pytest.approx(1.0) and clock.elapsed() == pytest.approx(6.0)


def test_training_line_shows_rate_elapsed_and_time_left():
    from viclip.train.logger import format_line

    line = format_line({"phase": "pretrain", "step": 10, "steps": 100, "loss": 1.5, "lr": 1e-4, "temp": 0.01,
                        "clips_per_s": 80.0, "data_wait": 0.05, "skipped_samples": 0, "nonfinite_steps": 0,
                        "mfu": None, "steps_per_s": 2.5, "elapsed_s": 4.0, "eta_phase_s": 36.0, "eta_run_s": 3700.0})
    assert line.startswith("[pretrain] step 10/100 | loss 1.5000")
    assert line.endswith("steps/s 2.5 | elapsed 0:00:04 | ETA phase 0:00:36, run 1:01:40")


def test_a_table_stage_reports_clips_within_a_shard_off_a_terminal(tmp_path, monkeypatch, capsys):
    import pyarrow as pa

    from viclip import progress as progress_module
    from viclip.curation.stages import run_table_stage
    from viclip.curation.table import rows_to_table, write_table

    src = tmp_path / "clips"
    rows = [{"video_id": "v", "clip_id": f"v_{i}", "status": "kept" if i < 3 else "dropped"} for i in range(4)]
    write_table(rows_to_table(rows), src / "00000.parquet")
    (src / "00000.stats.json").write_text("{}")

    def process(shard):
        for _ in range(3):  # one kept clip at a time, as captioning reports its batches
            shard.advance(1)
        return shard.table.append_column("seen", pa.array([1] * shard.table.num_rows)), {"clips": 3}

    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    run_table_stage(src, tmp_path / "quiet", lambda: process, {"stage": "test"}, progress=False)
    assert capsys.readouterr().err == ""
    run_table_stage(src, tmp_path / "shown", lambda: process, {"stage": "test"})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0].rsplit(": ", 1)[1] for line in lines] == [
        "1/3 clip (33.3%)", "2/3 clip (66.7%)", "3/3 clip (100.0%)"]
