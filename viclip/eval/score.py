"""ViCLIP score: the cosine similarity of each (generated) video with its prompt, as text-to-video benchmarks use it.

Videos and prompts go through the evaluation embedding path (:mod:`viclip.eval.embed`: the official
frame sampling, the eval resize, the official caption cleaning), so ``eval.py task=viclip_score`` and
:func:`score` give the same numbers for the same checkpoint and protocol. A video that cannot be
decoded scores NaN and is left out of the mean (and counted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from viclip.data.annotations import VideoText, load_video_text_annotations
from viclip.data.formats import VIDEO_EXTENSIONS
from viclip.errors import DataError
from viclip.eval.embed import embed_texts, embed_videos
from viclip.eval.protocol import VideoProtocol
from viclip.model import ViCLIP

PROMPTS_FORMAT = ('a .txt with one prompt a line (line i for the i-th video of the folder in sorted file-name '
                  'order) or a JSON list of {"video": path relative to the folder, "caption": prompt}')


def read_prompts(videos: str | os.PathLike, prompts: str | os.PathLike) -> list[VideoText]:
    """One record per video with its prompt, from a folder and a prompts file (see ``PROMPTS_FORMAT``)."""
    folder, prompts = Path(videos), Path(prompts)
    if not folder.is_dir():
        raise FileNotFoundError(f"videos={folder}: not a directory of videos")
    if not prompts.is_file():
        raise FileNotFoundError(f"prompts={prompts} does not exist; expected {PROMPTS_FORMAT}")
    if prompts.suffix == ".json":
        return load_video_text_annotations(prompts, folder, missing="keep")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    lines = [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
    if len(lines) != len(files):
        raise DataError(f"prompts={prompts} has {len(lines)} prompts but videos={folder} holds {len(files)} "
                         f"videos; expected {PROMPTS_FORMAT}")
    return [VideoText(str(f), (line,)) for f, line in zip(files, lines)]


def cosine_per_video(video: torch.Tensor, ok: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of video and text embeddings ``[N, D]``; NaN where the video was unreadable."""
    sims = (F.normalize(video.float(), dim=-1) * F.normalize(text.float(), dim=-1)).sum(-1)
    return sims.masked_fill(~ok, float("nan"))


def score(model: ViCLIP, videos: Sequence[str | os.PathLike], texts: Sequence[str],
          protocol: VideoProtocol | None = None, device: torch.device | str | None = None, batch_size: int = 32,
          num_workers: int = 0, precision: str = "fp32", official_cleaning: bool = True) -> torch.Tensor:
    """ViCLIP score ``[N]`` of video files and their prompts (cosine similarity, NaN for an unreadable video).

    ``protocol`` defaults to the official one (8 frames, middle sampling) at the model's image size.
    """
    if len(videos) != len(texts):
        raise ValueError(f"score needs one text per video, got {len(videos)} videos and {len(texts)} texts")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    protocol = protocol or VideoProtocol(image_size=model.cfg.image_size)
    records = [VideoText(os.fspath(v), (t,)) for v, t in zip(videos, texts)]
    was_training = model.training
    model.eval()
    try:
        video, ok = embed_videos(model, records, protocol, device, batch_size=batch_size, num_workers=num_workers,
                                 precision=precision)
        text = embed_texts(model, list(texts), device, precision=precision, official_cleaning=official_cleaning)
    finally:
        model.train(was_training)
    return cosine_per_video(video, ok, text)


def score_summary(records: Sequence[VideoText], sims: torch.Tensor) -> tuple[dict, list[dict]]:
    """``({"mean": ..., "scored": ..., "skipped": ...}, per-video rows)`` for the results JSON."""
    ok = ~torch.isnan(sims)
    mean = float(sims[ok].mean()) if ok.any() else float("nan")
    rows = [{"video": r.video, "prompt": r.captions[0], "similarity": None if torch.isnan(s) else float(s)}
            for r, s in zip(records, sims)]
    return {"mean": mean, "scored": int(ok.sum()), "skipped": int((~ok).sum())}, rows
