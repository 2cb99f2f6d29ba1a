"""The official annotation formats, read unchanged, and a Dataset that decodes them for evaluation.

- Video-text list (training, retrieval): a JSON list of ``{"video": relative_path, "caption": text}``
  under a data root; ``caption`` may be a list (several captions per video).
- Kinetics-style list: the same JSON with ``caption`` set to the class name.
- Kinetics CSV: ``label,youtube_id,time_start,time_end,split`` plus a filename pattern.

Missing video files are counted and reported in one log line, then dropped (or raised, or kept).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from viclip.data.formats import MAX_PIXELS, VideoDecodeError
from viclip.data.video import read_video
from viclip.errors import DataError

log = logging.getLogger(__name__)
KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
# Kinetics ``{id}_{start}_{end}``, ActivityNet ``v_{id}``, or a bare 11-character YouTube id (MSVD)
_YOUTUBE_NAME = re.compile(r"^(?:v_)?([A-Za-z0-9_-]{11})(?:_\d+(?:\.\d+)?_\d+(?:\.\d+)?)?$")
_MAX_DECODE_WARNINGS = 20


def youtube_id(name: str | None) -> str | None:
    """The YouTube id a video name carries (``abc_DEF-123``, ``v_{id}``, ``{id}_{start}_{end}.mp4``), else None."""
    if not name:
        return None
    match = _YOUTUBE_NAME.match(Path(str(name)).stem)
    return match.group(1) if match else None


@dataclass(frozen=True)
class VideoText:
    """One video with its captions; ``label`` is the class index in classification sets."""

    video: str
    captions: tuple[str, ...]
    label: int | None = None


def _check_missing(records: list[VideoText], source: str | os.PathLike, missing: str) -> list[VideoText]:
    if missing == "keep":
        return records
    if missing not in ("drop", "error"):
        raise ValueError(f"missing must be 'drop', 'error' or 'keep', got {missing!r}")
    absent = [r.video for r in records if not os.path.exists(r.video)]
    if not absent:
        return records
    msg = f"{len(absent)} of {len(records)} videos listed in {source} are missing (first: {absent[0]})"
    if missing == "error":
        raise FileNotFoundError(msg)
    log.warning("%s; they are left out", msg)
    gone = set(absent)
    return [r for r in records if r.video not in gone]


def _read_json_list(path: str | os.PathLike) -> list[dict]:
    try:
        items = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of {{'video', 'caption'}} objects, got {type(items).__name__}")
    if not items:
        raise DataError(f"{path}: the annotation list is empty; expected a JSON list of {{'video', 'caption'}} objects")
    return items


def _captions(item: dict, i: int, path) -> tuple[str, ...]:
    if not isinstance(item, dict) or "video" not in item or "caption" not in item:
        raise DataError(f"{path}: entry {i} needs the fields 'video' and 'caption', got {item!r:.200}")
    caption = item["caption"]
    # only a list spells several captions: tuple() of a dict would take its keys as the captions
    captions = (caption,) if isinstance(caption, str) else tuple(caption) if isinstance(caption, list) else ()
    if not captions or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{path}: entry {i} ('{item['video']}'): caption must be a string or a list of strings, "
                        f"got {caption!r:.200}")
    return captions


def load_video_text_annotations(path: str | os.PathLike, data_root: str | os.PathLike,
                                missing: str = "drop") -> list[VideoText]:
    """Read an official video-text JSON list; video paths are joined to ``data_root``."""
    items = _read_json_list(path)
    records = [VideoText(os.path.join(data_root, item["video"]), _captions(item, i, path))
               for i, item in enumerate(items)]
    return _check_missing(records, path, missing)


def _class_list(class_names: Sequence[str] | str | os.PathLike | None, found: list[str]) -> list[str]:
    if class_names is None:
        return sorted(set(found))
    source = "the class list"
    if isinstance(class_names, (str, os.PathLike)):
        source, text = str(class_names), Path(class_names).read_text()
        try:
            names = json.loads(text) if source.endswith(".json") else [
                line.strip() for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise DataError(f"{source} is not valid JSON: {e}") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{source}: expected one class name a line (.txt) or a non-empty JSON list of strings")
    else:
        names = list(class_names)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{len(unknown)} labels are not in {source}, e.g. {unknown[:3]}")
    return names


def _kinetics_fields(row: dict, line: int, path) -> dict:
    """A CSV row with ``time_start`` and ``time_end`` as ints (seconds), for the filename pattern."""
    out = dict(row)
    for name in ("time_start", "time_end"):
        try:
            out[name] = int(float(row[name]))
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {line}: {name}={row[name]!r} is not a number of seconds") from None
    return out


def load_kinetics(
    path: str | os.PathLike,
    data_root: str | os.PathLike,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    filename_pattern: str = KINETICS_PATTERN,
    split: str | None = None,
    missing: str = "drop",
) -> tuple[list[VideoText], list[str]]:
    """Read a Kinetics-style JSON list (caption = class name) or a Kinetics CSV.

    ``class_names`` (a list, or a .txt with one name a line, or a .json list) fixes the label
    order; by default the sorted set of labels found. For the CSV, ``filename_pattern`` is formatted
    with the row (``youtube_id``, ``time_start`` and ``time_end`` as ints, ``label``, ``split``), and
    ``split`` keeps only rows of that split when the CSV has the column.
    """
    if str(path).endswith(".csv"):
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"annotation file not found: {path}") from None
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not rows:
            raise DataError(f"{path}: the annotation list is empty; expected a Kinetics CSV with a header "
                            "label,youtube_id,time_start,time_end[,split] and one row a video")
        if not need <= set(rows[0]):
            raise DataError(f"{path}: a Kinetics CSV needs the columns {sorted(need)}, got {sorted(rows[0])}")
        numbered = [(line, r) for line, r in enumerate(rows, start=2)  # line 1 is the header
                    if split is None or r.get("split", split) == split]
        if not numbered:
            raise DataError(f"{path}: no row has split={split}")
        entries = [(filename_pattern.format(**_kinetics_fields(r, line, path)), r["label"]) for line, r in numbered]
    else:
        items = _read_json_list(path)
        entries = []
        for i, item in enumerate(items):
            captions = _captions(item, i, path)
            entries.append((item["video"], captions[0]))
    names = _class_list(class_names, [label for _, label in entries])
    index = {name: i for i, name in enumerate(names)}
    records = [VideoText(os.path.join(data_root, video), (label,), index[label]) for video, label in entries]
    return _check_missing(records, path, missing), names


class VideoTextDataset(Dataset):
    """Decode (middle sampling by default) and transform the videos of an annotation list.

    An unreadable video does not raise: its item has ``video=None``, and :meth:`collate` moves its
    index to ``skipped`` so evaluation can count it and keep its metrics aligned with ``index``.
    """

    def __init__(self, records: Sequence[VideoText], num_frames: int = 8,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, sampling: str = "middle",
                 size: int | tuple[int, int] | None = None, backend: str = "auto",
                 max_pixels: int | None = MAX_PIXELS, max_seconds: float | None = None) -> None:
        self.records = list(records)
        self.num_frames, self.transform, self.sampling = num_frames, transform, sampling
        self.size, self.backend, self.max_pixels, self.max_seconds = size, backend, max_pixels, max_seconds
        self._warnings = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        try:
            frames = read_video(record.video, self.num_frames, self.sampling, size=self.size,
                                backend=self.backend, rng=i, max_pixels=self.max_pixels, max_seconds=self.max_seconds)
        except VideoDecodeError as e:
            if self._warnings < _MAX_DECODE_WARNINGS:
                self._warnings += 1
                log.warning("skipping item %d: %s", i, e)
            return {"index": i, "video": None}
        return {"index": i, "video": self.transform(frames) if self.transform else frames}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        """``video`` [B, ...] of the readable items, their ``index`` (LongTensor) and ``skipped`` indices."""
        kept = [it for it in items if it["video"] is not None]
        return {
            "video": torch.stack([it["video"] for it in kept]) if kept else None,
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.long),
            "skipped": [it["index"] for it in items if it["video"] is None],
        }
