"""``pip install`` of the built wheel (not the clone) gives working commands, and the tested set of versions in
constraints.txt lies inside pyproject.toml's ranges.

The wheel is built from a copy of the working tree with no network and no build isolation, then installed
with ``--no-deps`` into a fresh venv whose dependencies are this venv's site-packages, added as a plain path
(a ``.pth`` line: no second torch download; the clone's editable-install hook, a ``.pth`` file there, is not
run). The model is the real architecture at its tiny size with random weights: the run checks the installed
pipeline, not accuracy.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from viclip.model import create_model, export_safetensors

ROOT = Path(__file__).resolve().parents[1]
NOT_CONSTRAINED = {"torch", "torchvision", "viclip", "yt-dlp"}  # see constraints.txt's header


def _pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding only the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the shared tree
    shutil.copytree(ROOT / "viclip", src / "viclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src))
    (wheel,) = (tmp / "dist").glob("viclip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"viclip/configs/eval.yaml", "viclip/configs/train.yaml", "viclip/configs/task/synthetic_zeroshot.yaml",
            "viclip/configs/experiment/demo.yaml", "viclip/commands/curate.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{c} = viclip.commands." in scripts for c in ("viclip-train", "viclip-eval", "viclip-curate"))

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # ordered, no repeat
    (Path(purelib) / "viclip_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    _pip("install", "--no-deps", "--no-index", "--ignore-installed", str(wheel), python=python)
    where = subprocess.run([python, "-c", "import viclip; print(viclip.__file__)"], cwd=tmp, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the clone
    return venv / "bin"


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    proc = subprocess.run(command, cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_installed_viclip_eval_runs_a_task_from_a_user_config_folder(installed, tmp_path):
    torch.manual_seed(0)
    ckpt = export_safetensors(create_model("tiny"), tmp_path / "tiny.safetensors")
    # A task of the user's own, extending the shipped synthetic_zeroshot: both search paths compose.
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "my_zeroshot.yaml").write_text(
        "defaults:\n  - synthetic_zeroshot\n  - _self_\nname: my_zeroshot\nsynthetic: {n_eval: 8, size: 32}\n")
    out = tmp_path / "out"
    _run([str(installed / "viclip-eval"), "--config-dir", str(tmp_path / "conf"), "task=my_zeroshot",
          f"checkpoint={ckpt}", f"cache_dir={tmp_path / 'cache'}", f"output_dir={out}", "num_workers=0",
          "batch_size=4"], cwd=tmp_path)
    result = json.loads((out / "my_zeroshot.json").read_text())
    assert result["name"] == "my_zeroshot" and result["checkpoint"]["model"] == "tiny"
    assert result["data"]["evaluated"] == 8 and set(result["metrics"]) == {"top1", "top5", "avg"}


def test_installed_train_and_curate_commands_find_their_configs_and_stages(installed, tmp_path):
    job = _run([str(installed / "viclip-train"), "--cfg", "job", "experiment=demo"], cwd=tmp_path).stdout
    assert "trainer:" in job and "phases:" in job  # the demo experiment composed from the installed configs
    usage = _run([str(installed / "viclip-curate"), "--help"], cwd=tmp_path).stdout
    assert usage.startswith("usage: viclip-curate") and "split-scenes" in usage and "make-shards" in usage


def test_constraints_pin_every_requirement_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            (spec,) = pin.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(pin.name)] = spec.version
    for req in requirements:
        name = canonicalize_name(req.name)
        if name in NOT_CONSTRAINED:
            continue
        assert name in pins, f"constraints.txt has no pin for {req.name}"
        assert req.specifier.contains(pins[name]), f"constraints.txt: {name}=={pins[name]} is outside {req}"
