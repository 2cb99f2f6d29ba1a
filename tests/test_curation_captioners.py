"""caption-clips' edges: models checked before any work (offline, empty cache: one fast line), the
documented plugin example run as written from the working directory, and captions of one's own."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from test_curation_captioning_scoring import _run_tool, make_stage

from viclip.curation.table import read_tables
from viclip.curation.writer import make_shards
from viclip.data.tars import iter_tar_samples

ROOT = Path(__file__).resolve().parents[1]


def test_missing_hub_models_fail_fast_in_one_line_and_write_nothing(tmp_path, monkeypatch):
    import huggingface_hub.constants

    empty = tmp_path / "hf_cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty))
    stage = make_stage(tmp_path / "clips", shards=1)
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        _run_tool(monkeypatch, "caption_clips", "--input", stage, "--out", tmp_path / "cap", "--device", "cpu",
                  "--no-progress")
    seconds = time.perf_counter() - started
    line = str(exit_info.value.code)
    assert "\n" not in line and "Salesforce/blip2-opt-2.7b" in line and str(empty) in line
    assert "--coarse-path" in line and "--coarse-kind" in line and "--captions FILE" in line  # the model-free way
    assert not (tmp_path / "cap").exists()  # no config.json left behind
    assert seconds < 10, seconds  # a file check, not a 146 s wait on the network


def test_documented_plugin_example_runs_from_the_working_directory(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "captioners.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.DOTALL).group(1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_captioner.py").write_text(code)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(work))])
    stage = make_stage(tmp_path / "clips", shards=1)
    _run_tool(monkeypatch, "caption_clips", "--input", stage, "--out", tmp_path / "cap", "--device", "cpu",
              "--workers", "0", "--no-progress", "--coarse-kind", "my_captioner:captioner",
              "--summariser-kind", "my_captioner:summariser")
    kept = [r for r in read_tables([tmp_path / "cap"]).to_pylist() if r["status"] == "kept"]
    assert kept and all(re.fullmatch(r"a mostly (red|green|blue) frame", r["caption"]) for r in kept)
    assert all(re.fullmatch(r"a mostly (red|green|blue) frame", r["caption_coarse"]) for r in kept)


def test_a_plugin_that_does_not_import_is_one_line(tmp_path, monkeypatch):
    stage = make_stage(tmp_path / "clips", shards=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _run_tool(monkeypatch, "caption_clips", "--input", stage, "--out", tmp_path / "cap", "--no-progress",
                  "--coarse-kind", "no_such_module:factory")
    assert "--coarse-kind no_such_module:factory: no module 'no_such_module'" in str(exit_info.value.code)
    assert not (tmp_path / "cap").exists()


def test_own_captions_file_goes_straight_to_shards(tmp_path, monkeypatch):
    stage = make_stage(tmp_path / "clips", shards=1)
    kept = [r for r in read_tables([stage]).to_pylist() if r["status"] == "kept"]
    path = tmp_path / "mine.csv"
    pcsv.write_csv(pa.table({"clip_id": [r["clip_id"] for r in kept],
                             "caption": [f"my words for {r['clip_id']}" for r in kept]}), path)
    _run_tool(monkeypatch, "caption_clips", "--input", stage, "--out", tmp_path / "cap", "--captions", path,
              "--no-progress")
    rows = {r["clip_id"]: r for r in read_tables([tmp_path / "cap"]).to_pylist()}
    assert all(rows[r["clip_id"]]["caption"] == f"my words for {r['clip_id']}" for r in kept)
    stats = json.loads((tmp_path / "cap" / "00000.stats.json").read_text())
    assert stats["from_file"] == len(kept)
    # the corrupt clip (dropped by nothing here: no decoding) still has its tar member: shards take all kept
    sizes = make_shards([tmp_path / "cap"], None, tmp_path / "shards", progress=False)
    with open(tmp_path / "shards" / next(iter(sizes)), "rb") as f:
        texts = {s["txt"].decode() for s in iter_tar_samples(f)}
    assert texts == {f"my words for {r['clip_id']}" for r in kept}
