"""The embedded demo data: short H.264 clips of coloured shapes that move, with captions that say how.

Each clip shows one or two shapes (colour x shape) moving left, right, up or down over a background.
The motion is only visible across frames, so a model has to use time to match "moving to the left"
with "moving to the right"; some colour-shape pairs never appear in training and form the zero-shot
set, whose classes are the four motions (chance 0.25). Captions sometimes leave out the colour or
the shape ("something moving up"), which gives the generic zero-shot prompt its meaning.

Horizontal flips swap left and right: train on this data with ``VideoTransform(True, hflip=0)``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from viclip.atomic import atomic_write
from viclip.data.tars import SIZES_FILE, ShardWriter
from viclip.errors import ConfigError, OutputError

COLOURS = {
    "red": (225, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235),
    "yellow": (235, 220, 40), "purple": (165, 60, 205), "cyan": (40, 215, 225),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTION_TEXT = {"left": "moving to the left", "right": "moving to the right", "up": "moving up",
               "down": "moving down"}
BACKGROUNDS = {"black": (16, 16, 16), "gray": (110, 110, 110), "brown": (80, 55, 35)}
ZERO_SHOT_CLASSES = [f"something {MOTION_TEXT[m]}" for m in MOTIONS]
COMPLETE_FILE = "COMPLETE.json"
STARTED_FILE = "STARTED.json"  # written before the parts: what lies beside it is ours to delete
_VERSION = 1  # bump when the generator's output changes, so old directories are rebuilt


def held_out_pairs() -> list[tuple[str, str]]:
    """The 6 of 18 colour-shape pairs kept out of training: each colour once, each shape twice."""
    return [(c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLOURS)]


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    motion: str


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`make_synthetic` put each part (all absolute)."""

    root: Path
    train_shards: Path  # directory of tars + sizes.json, usable as a corpus by viclip.data.stream
    zeroshot_root: Path  # data root of the zero-shot videos
    zeroshot_annotations: Path  # official JSON list, caption = class name
    zeroshot_classes: Path  # class names, one per line, in label order
    retrieval_root: Path
    retrieval_annotations: Path  # official JSON list, several captions per video


def _mask(shape: str, d: int) -> np.ndarray:
    yy, xx = np.mgrid[:d, :d] + 0.5
    if shape == "circle":
        return (yy - d / 2) ** 2 + (xx - d / 2) ** 2 <= (d / 2) ** 2
    if shape == "square":
        m = max(1, round(d * 0.08))  # a little inset so a square and a circle have similar areas
        out = np.zeros((d, d), bool)
        out[m:d - m, m:d - m] = True
        return out
    if shape == "triangle":  # apex up
        return np.abs(xx - d / 2) <= yy / 2
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(objects: list[SceneObject], background: str, size: int, num_frames: int,
                rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 ``[T, size, size, 3]``: a lightly textured background and each object moving in a line.

    Objects are 22-30 % of the frame wide and travel 35-50 % of it over the clip, so the direction
    is unmistakable even after the frames are scaled down to 32 px.
    """
    base = np.array(BACKGROUNDS[background], np.int16)
    bg = np.clip(base + rng.integers(-12, 13, (size, size, 1)), 0, 255).astype(np.uint8)
    frames = np.repeat(bg[None], num_frames, axis=0)
    steps = max(1, num_frames - 1)
    for obj in objects:
        d = round(size * rng.uniform(0.22, 0.30))
        travel = size * rng.uniform(0.35, 0.50)
        dx, dy = MOTIONS[obj.motion]
        free = size - d - travel  # room left on the moving axis once the whole path fits in the frame
        x0 = rng.uniform(0, free) if dx == 1 else (rng.uniform(travel, size - d) if dx == -1 else
                                                    rng.uniform(0, size - d))
        y0 = rng.uniform(0, free) if dy == 1 else (rng.uniform(travel, size - d) if dy == -1 else
                                                    rng.uniform(0, size - d))
        mask = _mask(obj.shape, d)
        colour = np.array(COLOURS[obj.colour], np.uint8)
        for t in range(num_frames):
            x = round(x0 + dx * travel * t / steps)
            y = round(y0 + dy * travel * t / steps)
            frames[t, y:y + d, x:x + d][mask] = colour
    return frames


def describe(obj: SceneObject, rng: np.random.Generator, full: bool = False) -> str:
    """A caption for one object; unless ``full``, the colour or the shape is sometimes left out."""
    r = 0.0 if full else rng.random()
    if r < 0.6:
        noun = f"a {obj.colour} {obj.shape}"
    elif r < 0.75:
        noun = f"a {obj.shape}"
    elif r < 0.9:
        noun = f"a {obj.colour} shape"
    else:
        noun = "something"
    return f"{noun} {MOTION_TEXT[obj.motion]}"


def caption_for(objects: list[SceneObject], background: str, rng: np.random.Generator,
                full: bool = False) -> str:
    text = " and ".join(describe(o, rng, full) for o in objects)
    if not full and rng.random() < 0.25:
        text += f" on a {background} background"
    return text


def _random_object(rng: np.random.Generator, held_out: bool) -> SceneObject:
    hidden = set(held_out_pairs())
    pairs = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in hidden) == held_out]
    colour, shape = pairs[rng.integers(len(pairs))]
    return SceneObject(colour, shape, list(MOTIONS)[rng.integers(len(MOTIONS))])


def _write_eval_set(root: Path, clips: list[tuple[np.ndarray, list[str] | str]], fps: float) -> Path:
    from viclip.data.video import write_mp4

    records = []
    for i, (frames, caption) in enumerate(clips):
        rel = f"videos/{i:06d}.mp4"
        atomic_write(root / rel, write_mp4(frames, fps=fps), durable=False)
        records.append({"video": rel, "caption": caption})
    return atomic_write(root / "annotations.json", json.dumps(records, indent=1), durable=False)


def _paths(root: Path) -> SyntheticPaths:
    return SyntheticPaths(
        root=root, train_shards=root / "train",
        zeroshot_root=root / "zeroshot", zeroshot_annotations=root / "zeroshot" / "annotations.json",
        zeroshot_classes=root / "zeroshot" / "classes.txt",
        retrieval_root=root / "retrieval", retrieval_annotations=root / "retrieval" / "annotations.json",
    )


def make_synthetic(
    out_dir: str | Path,
    n_train: int = 2000,
    n_eval: int = 200,
    size: int = 64,
    num_frames: int = 8,
    seed: int = 0,
    fps: float = 8.0,
    shard_size: int = 500,
    two_object_fraction: float = 0.15,
) -> SyntheticPaths:
    """Write training shards, a zero-shot set and a retrieval set under ``out_dir``; return their paths.

    Deterministic by its arguments. ``COMPLETE.json`` (the arguments) is written last: a directory
    made with the same arguments is returned as it is, one made with other arguments (or killed
    before its marker: ``STARTED.json`` is written before the parts) is rebuilt; parts without either
    marker are the user's and are never deleted (OutputError). Demo data is cheap to rebuild, so the
    evaluation files are written atomically but not fsynced (``viclip.atomic``'s ``durable=False``).
    """
    if size % 2 or size < 16:
        raise ConfigError(f"size must be even and >= 16 (H.264 4:2:0), got {size}")
    if n_train < 1 or n_eval < 4 or num_frames < 2:
        raise ConfigError(f"need n_train >= 1, n_eval >= 4, num_frames >= 2; "
                          f"got {n_train}, {n_eval}, {num_frames}")
    root = Path(out_dir).resolve()
    paths = _paths(root)
    params = {"n_train": n_train, "n_eval": n_eval, "size": size, "num_frames": num_frames, "seed": seed,
              "fps": fps, "shard_size": shard_size, "two_object_fraction": two_object_fraction,
              "version": _VERSION}
    marker, started = root / COMPLETE_FILE, root / STARTED_FILE
    if marker.exists():
        if json.loads(marker.read_text()).get("params") == params:
            return paths
        marker.rename(started)  # ours, made with other arguments: rebuilt below
    ours = {"train", "zeroshot", "retrieval", STARTED_FILE}
    if root.exists():
        foreign = [p.name for p in root.iterdir() if p.name not in ours]
        if foreign:
            raise OutputError(f"{root} holds files make_synthetic did not write ({foreign[:3]}); "
                              "choose an empty or new directory")
        parts = [p.name for p in root.iterdir() if p.name != STARTED_FILE]
        if parts and not started.exists():  # a train/ or zeroshot/ of the user's, not a run of ours
            raise OutputError(f"{root} holds {sorted(parts)} without {STARTED_FILE} or {COMPLETE_FILE}: "
                              "make_synthetic did not write them and will not delete them; choose an empty "
                              "or new directory")
        for name in ours - {STARTED_FILE}:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(started, json.dumps({"params": params}), durable=False)  # before any part: they are ours

    from viclip.data.video import write_mp4  # PyAV and torch: not for make-synthetic --help

    # one generator per part, so changing n_eval does not change the training clips
    train_rng, zs_rng, ret_rng = (np.random.default_rng([seed, part]) for part in range(3))
    with ShardWriter(paths.train_shards, max_samples=shard_size) as writer:
        for i in range(n_train):
            k = 2 if train_rng.random() < two_object_fraction else 1
            objects = [_random_object(train_rng, held_out=False) for _ in range(k)]
            background = list(BACKGROUNDS)[train_rng.integers(len(BACKGROUNDS))]
            frames = render_clip(objects, background, size, num_frames, train_rng)
            meta = {"video_id": f"synthetic-{seed}-{i:06d}", "start": 0.0, "end": num_frames / fps,
                    "background": background, "objects": [asdict(o) for o in objects]}
            writer.write(write_mp4(frames, fps=fps), caption_for(objects, background, train_rng), meta)

    zs_clips = []
    for i in range(n_eval):
        obj = _random_object(zs_rng, held_out=True)
        obj = SceneObject(obj.colour, obj.shape, list(MOTIONS)[i % len(MOTIONS)])  # balanced classes
        background = list(BACKGROUNDS)[zs_rng.integers(len(BACKGROUNDS))]
        zs_clips.append((render_clip([obj], background, size, num_frames, zs_rng),
                         ZERO_SHOT_CLASSES[i % len(MOTIONS)]))
    _write_eval_set(paths.zeroshot_root, zs_clips, fps)
    atomic_write(paths.zeroshot_classes, "\n".join(ZERO_SHOT_CLASSES) + "\n", durable=False)

    ret_clips = []
    for _ in range(n_eval):
        obj = _random_object(ret_rng, held_out=bool(ret_rng.random() < 0.5))
        background = list(BACKGROUNDS)[ret_rng.integers(len(BACKGROUNDS))]
        captions = [caption_for([obj], background, ret_rng, full=True),
                    f"{caption_for([obj], background, ret_rng, full=True)} on a {background} background"]
        ret_clips.append((render_clip([obj], background, size, num_frames, ret_rng), captions))
    _write_eval_set(paths.retrieval_root, ret_clips, fps)

    meta = {"params": params, "held_out_pairs": held_out_pairs(), "classes": ZERO_SHOT_CLASSES,
            "train_samples": json.loads((paths.train_shards / SIZES_FILE).read_text())}
    atomic_write(marker, json.dumps(meta, indent=1), durable=False)  # last: it makes the directory complete
    started.unlink()
    return paths
