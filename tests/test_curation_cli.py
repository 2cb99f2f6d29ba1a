"""Tool options come from the package's dataclasses: parsing no options gives the package defaults."""

from __future__ import annotations

import argparse
import re

import pytest

from viclip.commands.curate import STAGES
from viclip.curation.cli import add_curation_args, add_options, config_from_args, from_args, values_from_args
from viclip.curation.clips import CurationConfig
from viclip.curation.interleave import ICLConfig
from viclip.curation.stage_configs import CaptionConfig, ModelSpec, ScoreConfig
from viclip.curation.subsets import SubsetSpec
from viclip.curation.writer import make_shards


def _parser(source, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, source, "options", **kwargs)
    return parser


def test_no_options_give_the_package_defaults():
    parser = argparse.ArgumentParser()
    add_curation_args(parser)
    assert config_from_args(parser.parse_args([])) == CurationConfig()
    assert from_args(CaptionConfig, _parser(CaptionConfig).parse_args([])) == CaptionConfig()
    assert from_args(ICLConfig, _parser(ICLConfig).parse_args([])) == ICLConfig()
    args = _parser(ScoreConfig).parse_args(["--viclip-checkpoint", "v.pth", "--clip-weights", "c.bin"])
    assert from_args(ScoreConfig, args) == ScoreConfig(viclip_checkpoint="v.pth", clip_weights="c.bin")
    assert from_args(SubsetSpec, _parser(SubsetSpec).parse_args(["--rule", "aes"])) == SubsetSpec("aes")
    kwargs = values_from_args(make_shards, _parser(make_shards, skip=("tables", "out_dir")).parse_args([]))
    assert kwargs == {"clips_dir": None, "max_samples": 1000, "max_bytes": 1 << 30, "caption_column": "caption",
                      "captions": None, "allow_empty_captions": False, "global_shuffle": True, "seed": 0,
                      "progress": True}


def test_nested_optional_and_bool_options():
    args = _parser(CaptionConfig).parse_args(["--fine-path", "tag2text", "--summariser-num-beams", "2"])
    cfg = from_args(CaptionConfig, args, fallbacks={"fine": "coarse"})
    assert cfg.fine == ModelSpec("hf", "tag2text") and cfg.summariser.num_beams == 2
    assert from_args(ICLConfig, _parser(ICLConfig).parse_args(["--max-clips", "16"])).max_clips == 16
    assert not from_args(SubsetSpec, _parser(SubsetSpec).parse_args(["--rule", "aes", "--no-kept-only"])).kept_only


def _stage_main(monkeypatch, capsys, stage: str, *argv: str) -> tuple[int | str | None, str]:
    """Run ``viclip-curate STAGE ARGV`` in-process; its exit code (or message) and what it printed."""
    import importlib

    from viclip.commands.curate import STAGES

    monkeypatch.setattr("sys.argv", [f"viclip-curate {stage}", *argv])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"viclip.commands.{STAGES[stage][0]}").main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


def test_a_misspelled_option_is_named(monkeypatch, capsys):
    """Not "the following arguments are required: --input": the token that was not recognised."""
    code, text = _stage_main(monkeypatch, capsys, "make-shards", "--inptu", "t.parquet", "--out", "o")
    assert code == 2 and "unrecognized option --inptu" in text and "required" not in text


def test_help_shows_defaults(monkeypatch, capsys):
    """Options without a help text (booleans, generated options) show their default too."""
    code, text = _stage_main(monkeypatch, capsys, "make-shards", "--help")
    assert code == 0
    assert re.search(r"--global-shuffle, --no-global-shuffle\s+default: True", text)
    assert re.search(r"--allow-empty-captions, --no-allow-empty-captions\s+default: False", text)
    assert re.search(r"--max-samples MAX_SAMPLES\s+default 1000", text)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_loads_no_torch(stage):
    """--help answers before the heavy imports (torch alone takes seconds): no stage's parser needs them
    (split-scenes and fetch-clips read their options from the curation configs, which need PyAV and OpenCV;
    the model-running stages read theirs from the torch-free viclip.curation.stage_configs)."""
    import ast
    import subprocess
    import sys

    code = "\n".join([
        "import sys", "from viclip.commands import curate", f"sys.argv = ['viclip-curate', {stage!r}, '--help']",
        "try:", "    curate.main()", "except SystemExit:", "    pass",
        "print('heavy:', sorted(m for m in ('torch', 'av', 'cv2', 'scenedetect') if m in sys.modules))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    allowed = {"av", "cv2", "scenedetect"} if stage in ("split-scenes", "fetch-clips") else set()
    heavy = set(ast.literal_eval(out.strip().rsplit("heavy:", 1)[1]))
    assert "heavy:" in out and heavy <= allowed, out[-500:]
