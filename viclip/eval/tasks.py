"""From a task config (``viclip/configs/task/*.yaml``) to the videos, labels and texts it evaluates.

Every path a task needs is a field of the task; a missing one fails before any model is loaded,
naming the field and the format it expects. Videos listed but absent on disk are *kept* here and
fail to decode later, so they are counted as skipped in the results instead of vanishing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from viclip.data.annotations import KINETICS_PATTERN, VideoText, load_kinetics, load_video_text_annotations
from viclip.data.synthetic import make_synthetic
from viclip.distributed import barrier, world
from viclip.errors import ConfigError, DataError
from viclip.eval.score import PROMPTS_FORMAT, read_prompts

KINDS = ("zeroshot", "retrieval", "linear", "score", "finetuned")
FORMATS = {
    "classification": "a Kinetics CSV (label,youtube_id,time_start,time_end[,split]) or a JSON list of "
                      '{"video": relative path, "caption": class name}',
    "video_text": 'a JSON list of {"video": relative path, "caption": text or list of texts}',
    "video_root": "a directory that the annotation's video paths are relative to",
    "class_names": "a .txt with one class name a line (label order) or a .json list",
}


@dataclass
class EvalSplit:
    """One list of videos with what they are scored against."""

    annotation: str
    video_root: str
    records: list[VideoText]
    class_names: list[str] = field(default_factory=list)  # classification only

    @property
    def videos(self) -> list[str]:
        return [r.video for r in self.records]


def _require(task: dict, key: str, expected: str, is_dir: bool = False) -> str:
    value = task.get(key)
    if value in (None, "", "???"):
        raise ConfigError(f"task.{key} is not set for task {task['name']}: give {expected}")
    path = Path(os.path.expanduser(str(value)))
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise FileNotFoundError(f"task.{key}={path} does not exist (task {task['name']}); expected {expected}")
    return str(path)


def _with_synthetic(task: dict, cache_dir: str | None) -> dict:
    """Path fields for a synthetic task: generated once (by rank 0) into the cache directory when the
    task does not name its own annotation file."""
    if not task.get("synthetic") or task.get("annotation"):
        return {}
    spec = dict(task["synthetic"])
    root = Path(os.path.expanduser(spec.pop("root", None) or os.path.join(cache_dir or ".", "synthetic_eval")))
    if world()[0] == 0:
        make_synthetic(root, **spec)
    barrier()
    paths = make_synthetic(root, **spec)  # returns at once: the directory is complete
    if task["kind"] == "retrieval":
        return {"annotation": str(paths.retrieval_annotations), "video_root": str(paths.retrieval_root)}
    return {"annotation": str(paths.zeroshot_annotations), "video_root": str(paths.zeroshot_root),
            "class_names": str(paths.zeroshot_classes)}


def _classification(task: dict, prefix: str = "") -> EvalSplit:
    annotation = _require(task, f"{prefix}annotation", FORMATS["classification"])
    video_root = _require(task, f"{prefix}video_root", FORMATS["video_root"], is_dir=True)
    class_names = task.get("class_names")
    if class_names:
        class_names = _require(task, "class_names", FORMATS["class_names"])
    records, names = load_kinetics(annotation, video_root, class_names=class_names,
                                   filename_pattern=task.get("filename_pattern") or KINETICS_PATTERN,
                                   split=task.get(f"{prefix}split"), missing="keep")
    return EvalSplit(annotation, video_root, records, names)


def label_task(task: dict) -> dict:
    """``name`` and ``dataset`` for a task of your own videos left unlabelled (``label=null``): the
    annotation file's name, so its results never pass for another set's."""
    if task.get("name"):
        return {} if task.get("dataset") else {"dataset": task["name"]}
    if not task.get("annotation"):
        raise ConfigError(f"annotation is not set for a {task.get('kind')} task of your own videos: give annotation="
                          f"FILE ({FORMATS['video_text' if task.get('kind') == 'retrieval' else 'classification']})")
    stem = Path(os.path.expanduser(str(task["annotation"]))).stem
    return {"name": stem, "dataset": task.get("dataset") or stem}


def load_task(task: dict, cache_dir: str | None = None) -> dict[str, EvalSplit]:
    """The splits of ``task`` (the resolved task config as a dict): ``{"eval": ...}``, plus
    ``"train"`` for linear probing."""
    if task.get("kind") not in KINDS:
        raise ConfigError(f"task.kind must be one of {KINDS}, got {task.get('kind')!r} (task {task.get('name')})")
    task = {**task, **label_task(task)}
    task = {**task, **_with_synthetic(task, cache_dir)}
    if task["kind"] == "score":  # viclip_score: a folder of (generated) videos and a prompt for each
        videos = _require(task, "videos", "a directory of videos (videos=DIR)", is_dir=True)
        prompts = _require(task, "prompts", PROMPTS_FORMAT + " (prompts=FILE)")
        return {"eval": EvalSplit(prompts, videos, read_prompts(videos, prompts))}
    if task["kind"] == "retrieval":
        annotation = _require(task, "annotation", FORMATS["video_text"])
        video_root = _require(task, "video_root", FORMATS["video_root"], is_dir=True)
        return {"eval": EvalSplit(annotation, video_root,
                                  load_video_text_annotations(annotation, video_root, missing="keep"))}
    if task["kind"] == "linear":  # every path is checked before any file is read
        _require(task, "train_annotation", FORMATS["classification"])
        _require(task, "train_video_root", FORMATS["video_root"], is_dir=True)
    splits = {"eval": _classification(task)}
    if task["kind"] == "linear":
        train = _classification(task, prefix="train_")
        if train.class_names != splits["eval"].class_names:
            raise DataError(f"task {task['name']}: train and eval splits have different class lists "
                             f"({len(train.class_names)} vs {len(splits['eval'].class_names)}); set task.class_names")
        splits["train"] = train
    return splits
