"""Kinetics-710: the union of the K400, K600 and K700 class lists and training videos (paper appendix E.2,
after UniFormerV2, Li et al. 2022), used to fine-tune before the target set (``ft_k710`` then ``ft_k710_k400``).

Classes are merged by their K710 name: the normalised name (lower case, ``_`` as a space, spaces collapsed)
after the renames table ``kinetics/renames.tsv`` (14 classes renamed between versions, e.g. K400's "dying
hair" is K700's "dyeing hair": without it the union of the public lists has 724 classes, not 710). The
order is that of first appearance (K400's classes keep their indices 0..399, so a K710 head sliced by the
label map is a K400 head), or that of an explicit K710 class file (``classes_order``), so that a head
lines up with an external K710 checkpoint. A label file that names one class twice is refused, naming the
file and both lines, since its label indices would be ambiguous. The public K400/600/700 lists and
mmaction2's K710 list ship in ``kinetics/`` (:func:`packaged_classes`).

Training videos are merged by YouTube id (the first source listing one
wins) and every one whose YouTube id appears in any evaluation list (val, test, of any of the three) is
removed, so no evaluation video was trained on.

Outputs, written atomically: ``classes.txt`` (one K710 name a line), ``train.json`` and ``val.json``
(official JSON lists, ``caption`` = K710 class name, ``video`` relative to the common video root) and
``label_map.json`` (each source's label index -> K710 index, and the counts).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from viclip.atomic import atomic_write
from viclip.data.annotations import KINETICS_PATTERN, VideoText, load_kinetics, youtube_id
from viclip.errors import DataError

KINETICS_DIR = Path(__file__).with_name("kinetics")
SOURCES = ("k400", "k600", "k700")  # the versions K710 merges, in merge order


def normalise_label(name: str) -> str:
    """The name classes are merged by: ``"Dyeing_Hair "`` and ``"dyeing hair"`` are one class."""
    return " ".join(name.strip().strip("\"'").replace("_", " ").lower().split())


def packaged_classes(version: str) -> Path:
    """The public class list of ``version`` (k400, k600, k700: alphabetical; k710: mmaction2's order)."""
    if version not in (*SOURCES, "k710"):
        raise ValueError(f"no packaged class list for {version!r}; known: {(*SOURCES, 'k710')}")
    return KINETICS_DIR / f"{version}.txt"


@functools.cache
def renames() -> dict[str, str]:
    """Normalised old name -> K710 name, from ``kinetics/renames.tsv``."""
    lines = (KINETICS_DIR / "renames.tsv").read_text().splitlines()
    pairs = [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]
    return {normalise_label(old): normalise_label(new) for old, new in pairs}


def k710_name(name: str) -> str:
    """The K710 class a Kinetics label belongs to: ``"Dying_Hair"`` and ``"dyeing hair"`` -> ``"dyeing hair"``."""
    name = normalise_label(name)
    return renames().get(name, name)


def source_key(video: str) -> str:
    """What merges a clip across K400/600/700 lists and matches it to an evaluation list: its YouTube id
    (``.../{youtube_id}_{start}_{end}.mp4``), else its file name."""
    return youtube_id(video) or Path(video).stem


def read_label_file(path: str | os.PathLike) -> list[str]:
    """One class name a line (the line order is the label order), as K710 names; a repeated class is an error."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = k710_name(line)
        if not name:
            continue
        if name in first_line:
            raise DataError(f"{path}:{number}: {line.strip()!r} is class {name!r} of line {first_line[name]} "
                            "again; a label file names each class once")
        first_line[name] = number
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names (expected one class name a line)")
    return names


@dataclass(frozen=True)
class LabelMap:
    """The merged classes and, per source, its label index -> merged index (UMT's ``label_mixto{N}``)."""

    classes: list[str]
    sources: dict[str, list[int]]

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


def build_label_map(label_files: dict[str, str | os.PathLike],
                    classes_order: str | os.PathLike | None = None) -> LabelMap:
    """Merge the label files (``{"k400": path, ...}``, in merge order) by K710 name; ``classes_order``: a
    class file giving the merged classes' order (it must name exactly the merged classes)."""
    lists = {source: read_label_file(path) for source, path in label_files.items()}
    classes = list(dict.fromkeys(name for names in lists.values() for name in names))
    if classes_order is not None:
        order = read_label_file(classes_order)
        missing, extra = sorted(set(classes) - set(order)), sorted(set(order) - set(classes))
        if missing or extra:
            raise DataError(f"{classes_order}: the K710 class order names {len(order)} classes, the label files "
                            f"merge to {len(classes)}; missing {len(missing)} {missing[:3]}, not in any label "
                            f"file {len(extra)} {extra[:3]}")
        classes = order
    index = {name: i for i, name in enumerate(classes)}
    return LabelMap(classes, {source: [index[n] for n in names] for source, names in lists.items()})


@dataclass(frozen=True)
class KineticsSource:
    """One Kinetics version's files: its label list, training list and the evaluation lists to keep out."""

    name: str
    classes: str
    train: str
    video_root: str
    eval: Sequence[str] = field(default_factory=tuple)  # val (joins K710's val.json) first, then test lists
    filename_pattern: str = KINETICS_PATTERN


def _records(path: str, video_root: str, pattern: str, label_map: LabelMap) -> list[tuple[str, str, int]]:
    """(video path, YouTube id, K710 label) of an annotation list (Kinetics CSV or JSON list)."""
    records: list[VideoText]
    records, names = load_kinetics(path, video_root, filename_pattern=pattern, missing="keep")
    index = label_map.index()
    unknown = sorted({k710_name(n) for n in names} - index.keys())
    if unknown:
        raise DataError(f"{path}: {len(unknown)} labels are in no label file, e.g. {unknown[:3]}")
    return [(r.video, source_key(r.video), index[k710_name(names[r.label])]) for r in records]


def _first_of_each(rows: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        if row[1] not in seen:
            seen.add(row[1])
            out.append(row)
    return out


def _as_list(rows: list[tuple[str, str, int]], root: str, classes: list[str]) -> str:
    return json.dumps([{"video": os.path.relpath(video, root), "caption": classes[label]}
                       for video, _, label in rows], indent=0)


def build_k710(sources: Sequence[KineticsSource], out_dir: str | os.PathLike,
               video_root: str | os.PathLike | None = None, classes_order: str | os.PathLike | None = None) -> dict:
    """Write the K710 label map, training and validation lists under ``out_dir``; return the counts.

    ``video_root`` is the directory the written ``video`` paths are relative to (by default the common
    parent of the sources' video roots): give it as the fine-tuning data's ``video_root``.
    ``classes_order``: the K710 class order (e.g. an external K710 checkpoint's), see :func:`build_label_map`.
    """
    if not sources:
        raise ValueError("build_k710 needs at least one Kinetics source")
    label_map = build_label_map({s.name: s.classes for s in sources}, classes_order)
    root = os.path.abspath(video_root) if video_root else os.path.commonpath(
        [os.path.abspath(s.video_root) for s in sources])
    held_out: set[str] = set()
    val: list[tuple[str, str, int]] = []
    for s in sources:
        for k, path in enumerate(s.eval):
            rows = _records(path, os.path.abspath(s.video_root), s.filename_pattern, label_map)
            held_out.update(yt for _, yt, _ in rows)
            if k == 0:
                val.extend(rows)
    train, counts = [], {}
    for s in sources:
        rows = _records(s.train, os.path.abspath(s.video_root), s.filename_pattern, label_map)
        kept = [r for r in rows if r[1] not in held_out]
        counts[s.name] = {"listed": len(rows), "in_eval": len(rows) - len(kept)}
        train.extend(kept)
    train, val = _first_of_each(train), _first_of_each(val)  # a clip listed by several versions once
    out = Path(out_dir)
    atomic_write(out / "classes.txt", "\n".join(label_map.classes) + "\n")
    atomic_write(out / "train.json", _as_list(train, root, label_map.classes))
    atomic_write(out / "val.json", _as_list(val, root, label_map.classes))
    report = {"num_classes": len(label_map.classes), "video_root": root, "train": len(train), "val": len(val),
              "counts": counts}
    atomic_write(out / "label_map.json", json.dumps({"classes": label_map.classes, "sources": label_map.sources,
                                                     **report}, indent=1))
    return report


def read_label_map(path: str | os.PathLike) -> LabelMap:
    """The :class:`LabelMap` of a ``label_map.json`` written by :func:`build_k710`."""
    try:
        data = json.loads(Path(path).read_text())
        return LabelMap(list(data["classes"]), {k: list(v) for k, v in data["sources"].items()})
    except FileNotFoundError:
        raise FileNotFoundError(f"K710 label map not found: {path}") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a K710 label_map.json ({e})") from None
