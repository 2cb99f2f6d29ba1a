"""The wheels a lent GPU machine lacks for ``bench/gpu_check.sh``, downloaded here (``make gpu-wheels``).

The lent machine reaches no package index: what the check imports beyond its image travels as wheels in
the ignored folder ``.whl/`` of the working tree, whose whole copy must stay under 64 MiB. The list is
computed, not kept by hand: the dependency closure of what the check runs (viclip's core requirements,
DeepSpeed, torchcodec), read from this environment's installed metadata, minus the packages of the
device image (``device_packages.txt``, from the device tool's KINDS.md) and torch's own closure (the image
has torch). Each wheel is the version installed here (the tested set of ``constraints.txt``), one
version each; a package released only as an sdist (DeepSpeed, antlr4) is built here into its
pure-Python wheel with ``pip wheel --no-deps``.

    python bench/gpu_wheels.py [--dest .whl] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
TREE_LIMIT = 64 * 2**20  # bytes: the working tree and the carried wheels together
DEVICE_PACKAGES_FILE = Path(__file__).with_name("device_packages.txt")  # the image's packages, from KINDS.md
# What the check runs beyond viclip's core requirements: train.py's engine, the loader's GPU decoding, and
# PySceneDetect (the loader section writes its shards with curation's clip settings, whose module needs it).
EXTRA_ROOTS = ("deepspeed", "torchcodec", "scenedetect")
# Packages of ours that the image holds under another name, the same module (OpenCV's headless build).
SAME_MODULE = {"opencv-python": "opencv-python-headless"}
# Core requirements the check does not import, with why (they would cost the size limit for nothing).
NOT_CARRIED = {"decord2": "an optional decoder: backend=auto reads with PyAV first and uses decord only if installed"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_env(python_version: str) -> dict[str, str]:
    return {"python_version": python_version, "python_full_version": python_version + ".0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def requirements(dist: str, env: dict[str, str]) -> list[str]:
    """The canonical names ``dist`` needs on the target (no extras), from its installed metadata."""
    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canonical(req.name))
    return out


def closure(roots: list[str], env: dict[str, str], stop: frozenset[str] = frozenset()) -> set[str]:
    """Every package reachable from ``roots`` through installed requirements, not descending into ``stop``."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in stop:
            todo.extend(requirements(name, env))
    return seen


def device_packages() -> set[str]:
    lines = DEVICE_PACKAGES_FILE.read_text().splitlines()
    return {canonical(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def device_has(env: dict[str, str]) -> set[str]:
    """The image's packages (and ours that they stand for), and torch's own closure (the image's torch brings
    its CUDA libraries)."""
    image = device_packages()
    return image | {ours for ours, theirs in SAME_MODULE.items() if theirs in image} | closure(["torch", "torchvision"],
                                                                                            env)


def missing_on_device(python_version: str = "3.12") -> list[tuple[str, str]]:
    """(name, version installed here) of every package the check needs that the device image lacks."""
    env = marker_env(python_version)
    roots = [name for name in requirements("viclip", env) if name not in NOT_CARRIED] + list(EXTRA_ROOTS)
    present = device_has(env)
    needed = closure(roots, env, stop=frozenset(present)) - present
    return sorted((name, md.version(name)) for name in needed)


def wheel_for(name: str, version: str, dest: Path, python_version: str) -> Path:
    """The wheel of ``name==version`` for the target in ``dest``: a binary from the index, else built here."""
    stem = "[-_.]".join(re.escape(part) for part in canonical(name).split("-"))
    pattern = re.compile(rf"^{stem}-{re.escape(version)}-", re.IGNORECASE)
    found = [p for p in dest.glob("*.whl") if pattern.match(p.name)]
    if found:
        return found[0]
    tag = python_version.replace(".", "")
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                python_version, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none",
                *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any", "-d", str(dest),
                f"{name}=={version}"]
    if subprocess.run(download, capture_output=True, text=True, check=False).returncode:
        # sdist only: build its wheel here; only a pure-Python one can travel to another interpreter
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest),
                 f"{name}=={version}"]
        proc = subprocess.run(build, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"gpu_wheels: {name}=={version}: no wheel for cp{tag} and building one failed: "
                     f"{proc.stderr.strip().splitlines()[-1:]}")
    found = [p for p in dest.glob("*.whl") if pattern.match(p.name)]
    if not found:
        sys.exit(f"gpu_wheels: {name}=={version}: pip gave no wheel in {dest}")
    if not (found[0].name.endswith("-none-any.whl") or f"-cp{tag}-" in found[0].name or "-abi3-" in found[0].name):
        sys.exit(f"gpu_wheels: {found[0].name} was built for this machine's Python, not for cp{tag}")
    return found[0]


def fetch(dest: Path, python_version: str) -> list[Path]:
    """The wheels of every missing package in ``dest`` (kept ones reused), and nothing else there."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = [wheel_for(name, version, dest, python_version) for name, version in missing_on_device(python_version)]
    for extra in set(dest.glob("*.whl")) - set(wheels):  # an older version would make two of one package
        extra.unlink()
    return wheels


def tree_bytes() -> int:
    """The bytes of the working tree that travel: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / ".whl")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (3.12 on the lent machines)")
    args = parser.parse_args()
    wheels = fetch(args.dest, args.python_version)
    width = max(len(w.name) for w in wheels)
    for w in sorted(wheels):
        print(f"  {w.name:<{width}}  {w.stat().st_size / 2**20:6.2f} MiB")
    total, tree = sum(w.stat().st_size for w in wheels), tree_bytes()
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; together "
          f"{(total + tree) / 2**20:.1f} of {TREE_LIMIT / 2**20:.0f} MiB")
    if total + tree > TREE_LIMIT:
        sys.exit("gpu_wheels: the wheels and the working tree exceed what travels to the GPU machine")
    dest = args.dest.resolve().relative_to(REPO) if args.dest.resolve().is_relative_to(REPO) else args.dest
    print("\nOn the GPU machine (the device tool: carry the wheels, one command, under 10 minutes):\n"
          f"  run(command='bash bench/gpu_check.sh', carry=['{dest}'], timeout_s=600)\n"
          f"Elsewhere: OUT=DIR VICLIP_WHEELS={dest} bash bench/gpu_check.sh   (rows in DIR/gpu_check.jsonl)")


if __name__ == "__main__":
    main()
