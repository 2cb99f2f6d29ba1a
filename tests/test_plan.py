"""The cost plan: rates read from a sample run's stats files, scaled to the job; unmeasured stages say so."""

from __future__ import annotations

import json
import sys

import pytest

from viclip.commands.plan import main as plan_main
from viclip.curation.plan import calibrate, plan, read_rates
from viclip.errors import DataError


def split_sample(root):
    """Two finished split-scenes shards: 3600 source seconds in 600 CPU seconds, 90 clips, 9 MB of tars."""
    root.mkdir()
    for s, (source, cpu, kept) in enumerate(((2400.0, 400.0, 60), (1200.0, 200.0, 30))):
        (root / f"{s:05d}.tar").write_bytes(b"\0" * (100_000 * kept))
        (root / f"{s:05d}.stats.json").write_text(json.dumps({
            "shard": s, "videos": 2, "source_seconds": source, "cpu_seconds": cpu, "kept": kept,
            "kept_seconds": kept * 8.0, "tar": f"{s:05d}.tar"}))
    return root


def model_sample(root, clips: int, seconds: float):
    root.mkdir()
    (root / "00000.parquet").write_bytes(b"\0" * (2_000 * clips))
    (root / "00000.stats.json").write_text(json.dumps({"shard": 0, "clips": clips, "seconds": seconds}))
    return root


def test_rates_from_stats_files_scale_to_the_job(tmp_path):
    rates = calibrate({"split": split_sample(tmp_path / "clips"), "embed": model_sample(tmp_path / "emb", 50, 10.0),
                       "caption": None}, device="H100")
    assert rates["split"]["source_seconds_per_cpu_second"] == pytest.approx(6.0)
    assert rates["split"]["kept_clips_per_source_hour"] == pytest.approx(90.0)
    assert rates["split"]["bytes_per_clip"] == pytest.approx(100_000)
    assert rates["embed"]["clips_per_second"] == pytest.approx(5.0)
    rows = {r.stage: r for r in plan(videos=1000, hours=600.0, rates=rates)}
    assert rows["split"].hours == pytest.approx(100.0)            # 600 source hours at 6 per core
    assert rows["split"].rate == "6.00 source min / core-min"
    assert rows["split"].storage_bytes == pytest.approx(54_000 * 100_000)  # 90 clips/hour x 600 hours
    assert rows["embed"].hours == pytest.approx(54_000 / 5.0 / 3600)
    assert rows["embed"].unit == "H100-hours"
    assert rows["caption"].hours is None and rows["caption"].rate == "not measured"
    assert rows["score"].rate == "not measured"


def test_rates_files_override_and_unmeasured_split_leaves_clips_unknown(tmp_path):
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"caption": {"clips_per_second": 20.0, "device": "H100", "bytes_per_clip": 10}}))
    rows = {r.stage: r for r in plan(10, 5.0, read_rates([gpu]))}
    assert rows["split"].rate == "not measured" and rows["caption"].hours is None  # no clip count
    rows = {r.stage: r for r in plan(10, 5.0, read_rates([gpu]), clips=72_000)}
    assert rows["caption"].hours == pytest.approx(1.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"splitting": {}}))
    with pytest.raises(DataError, match="bad.json: expected an object with stages"):
        read_rates([bad])


def test_command_prints_the_plan_and_errors_in_one_line(tmp_path, monkeypatch, capsys):
    split_sample(tmp_path / "clips")
    monkeypatch.setattr(sys, "argv", ["plan.py", "--videos", "7000000", "--hours", "760000", "--split-dir",
                                      str(tmp_path / "clips"), "--save-rates", str(tmp_path / "rates.json"),
                                      "--cores", "1000"])
    plan_main()
    out = capsys.readouterr().out
    assert "126,667 core-h" in out and "not measured" in out  # 760000 / 6
    assert json.loads((tmp_path / "rates.json").read_text())["split"]["kept_clips_per_source_hour"] == 90.0
    monkeypatch.setattr(sys, "argv", ["plan.py", "--videos", "1", "--hours", "1", "--embed-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        plan_main()
    assert "no finished shards" in str(exit_info.value.code)
