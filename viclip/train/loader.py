"""The config's ``data`` group turned into this rank's training loader, and the batch keys the loss reads.

Also generates the synthetic demo data when the run reads it and it is absent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from viclip.data.stream import StreamConfig, VideoTextLoader, build_train_loader
from viclip.data.synthetic import make_synthetic
from viclip.data.transforms import VideoTransform
from viclip.data.video import decode_plan
from viclip.distributed import fit_workers
from viclip.model import ViCLIPConfig, tokenize

log = logging.getLogger(__name__)


def prepare(data: DictConfig, is_main: bool) -> None:
    """Generate the synthetic data (rank 0) when ``data.generate`` is set and a source reads its
    ``train`` directory (not when the sources were pointed at other shards); a complete directory is
    kept as is."""
    if not is_main or data.get("generate") is None:
        return
    generated = Path(data.root) / "train"
    if any(Path(str(src.shards)) == generated for src in data.sources.values()):
        make_synthetic(Path(data.root), **OmegaConf.to_container(data.generate, resolve=True))


def loader_workers(data: DictConfig, cuda: bool) -> int:
    """``data.num_workers`` fitted to this rank's cores (viclip.distributed.fit_workers)."""
    return fit_workers(int(data.num_workers), cuda)


def train_transform(aug: DictConfig, image_size: int) -> VideoTransform:
    """``data.augment``'s crop and flip, to uint8: batches are normalised on the device by ``loader.normalize``
    (a quarter of the bytes to move). Pre-training and fine-tuning share it."""
    return VideoTransform(True, image_size, mean=aug.mean, scale=tuple(aug.scale), hflip=aug.hflip, normalize=False,
                          antialias=bool(aug.antialias))


def build_loader(cfg: DictConfig, model_cfg: ViCLIPConfig, batch_size: int, rank: int,
                 world_size: int) -> VideoTextLoader:
    """This rank's loader of ``batch_size`` clips per batch (the phase's): a fixed number of batches per
    epoch (``len``), resumable by ``state_dict``."""
    aug = cfg.data.augment
    tokenizer = functools.partial(tokenize, context_length=model_cfg.context_length)
    tokenizer(["warm-up"])  # builds the BPE tables (seconds) once here, not in every epoch's forked workers
    transform = train_transform(aug, model_cfg.image_size)
    cuda = torch.cuda.is_available()
    backend, num_workers, pin_memory = decode_plan(cfg.data.backend, loader_workers(cfg.data, cuda), cuda)
    config = StreamConfig(
        OmegaConf.to_container(cfg.data.sources, resolve=True), batch_size,
        num_frames=model_cfg.num_frames, num_workers=num_workers, seed=int(cfg.seed),
        shuffle_buffer=int(cfg.data.shuffle_buffer), backend=backend,
        max_member_bytes=int(cfg.data.max_member_bytes), min_caption_words=int(cfg.data.min_caption_words),
    )
    return build_train_loader(config, tokenizer, transform, rank, world_size, pin_memory=pin_memory)


def endless(loader: VideoTextLoader) -> Iterator[dict]:
    """Epoch after epoch; the loader moves to the next epoch by itself and keeps its position."""
    while True:
        yield from loader


def positive_keys(batch: dict, loss: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sample index, source video id) for the loss: rows sharing an index are positives; the video
    id is only needed when ``loss.same_video`` treats same-video pairs specially."""
    index = batch["index"].to(device)
    video_id = batch["video_id"].to(device) if loss.same_video != "negative" else None
    return index, video_id


def skipped_samples(loader: VideoTextLoader) -> int:
    return sum(loader.skip_counts().values())
