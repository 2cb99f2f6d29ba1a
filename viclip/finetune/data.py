"""The fine-tuning loader: seeded epochs over a list of samples (video + text, or video + label), sharded
over ranks, resumable mid-epoch, decoding with :func:`viclip.data.video.read_video` and the official
training transform (:class:`viclip.data.transforms.VideoTransform`: the paper's MultiScaleCrop scale
[0.5, 1] is the official code's RandomResizedCrop(scale=(0.5, 1)), plus a horizontal flip).

Unlike the pre-training stream over tar shards, a fine-tuning set is a short annotation list, so the
loader is map-style: epoch ``e`` is a permutation of every sample drawn from ``(seed, e)``, cut to a
multiple of ``world_size x batch_size`` (the remainder waits for a later epoch's permutation), and
rank ``r`` takes every ``world_size``-th batch-sized slice. A resumed loader skips the batches it had
handed out by index, decoding none of them. Every random draw of a sample (frames, crop, flip, the
``augment`` before the crop) is seeded by ``(seed, epoch, sample)``, so a resumed epoch yields the same
batches. ``repeats`` > 1 is repeated augmentation as UMT's ``--num_sample``: each video of a batch is
decoded once and transformed ``repeats`` times, its clips side by side (``[v0, v0', v1, v1', ...]``), so
a batch of ``batch_size`` videos holds ``batch_size x repeats`` clips.

A video that cannot be decoded is replaced by the next sample of the list (counted as
``undecodable`` in :meth:`FinetuneLoader.skip_counts`); ``max_retries`` failures in a row raise an
error that names the files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from viclip.data.formats import VideoDecodeError
from viclip.data.stream import check_resume_settings
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One training item: a video file with a text (retrieval) or a class label (recognition).

    ``group`` is the video's index in its annotation list: items of one group are positives of each
    other in the contrastive loss (a video with several captions).
    """

    video: str
    group: int
    text: str | None = None
    label: int | None = None


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides which batch is which (a resume needs it unchanged), plus decoding."""

    batch_size: int
    num_frames: int
    seed: int = 0
    num_workers: int = 0
    backend: str = "auto"
    max_retries: int = 10
    repeats: int = 1
    max_seconds: float | None = None  # sample frames from the first seconds only (UMT's DiDeMo trimmed30)


class _EpochBatches(Dataset):
    """Batch ``b`` of one epoch on one rank, decoded and collated in a worker."""

    def __init__(self, loader: FinetuneLoader, epoch: int) -> None:
        self.loader, self.epoch = loader, epoch
        self.order = loader.epoch_order(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def _decode(self, position: int) -> tuple[Sample, list[torch.Tensor], int]:
        """The sample at ``position`` of the list (or the next decodable one), its ``repeats`` clips; skips."""
        samples, cfg = self.loader.samples, self.loader.config
        errors = []
        for attempt in range(cfg.max_retries):
            i = (position + attempt) % len(samples)
            sample = samples[i]
            rng = np.random.default_rng([cfg.seed, self.epoch, i])
            seeds = [int(s) for s in rng.integers(2**62, size=cfg.repeats)]
            try:
                frames = read_video(sample.video, cfg.num_frames, "random", backend=cfg.backend, rng=rng,
                                    max_seconds=cfg.max_seconds)
            except VideoDecodeError as e:
                errors.append(str(e))
                log.warning("fine-tuning: %s; using the next sample", e)
                continue
            augment, transform = self.loader.augment, self.loader.transform
            clips = [transform(augment(frames, seed) if augment else frames,
                               generator=torch.Generator().manual_seed(seed)) for seed in seeds]
            return sample, clips, attempt
        raise VideoDecodeError(f"{cfg.max_retries} videos in a row cannot be decoded: " + "; ".join(errors))

    def __getitem__(self, b: int) -> dict:
        cfg, world = self.loader.config, self.loader.world_size
        start = (b * world + self.loader.rank) * cfg.batch_size
        decoded = [self._decode(int(p)) for p in self.order[start:start + cfg.batch_size]]
        samples = [s for s, _, _ in decoded for _ in range(cfg.repeats)]
        batch = {"video": torch.stack([c for _, clips, _ in decoded for c in clips]),
                 "index": torch.tensor([s.group for s in samples], dtype=torch.long),
                 "skipped": sum(k for _, _, k in decoded)}
        if self.loader.tokenizer is not None:
            batch["caption"] = [s.text for s in samples]
            batch["text"] = self.loader.tokenizer(batch["caption"])
        if samples[0].label is not None:
            batch["label"] = torch.tensor([s.label for s in samples], dtype=torch.long)
        return batch


class FinetuneLoader:
    """This rank's batches, ``len(loader)`` per epoch; iterating runs the rest of the current epoch and
    moves to the next, so the Trainer's endless loop needs no ``set_epoch``.

    Batches: ``video`` uint8 ``[B x repeats, T, 3, S, S]`` (:meth:`normalize` it on the device),
    ``index`` int64 (the sample's group), plus ``caption``/``text`` when a ``tokenizer`` is given and
    ``label`` when the samples have labels. ``augment(frames, seed)`` changes the decoded uint8 frames
    before the crop (recognition's RandAugment).
    """

    def __init__(self, samples: Sequence[Sample], config: LoaderConfig, transform: VideoTransform,
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False,
                 augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        if config.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {config.repeats}")
        self.samples, self.config, self.transform, self.tokenizer = list(samples), config, transform, tokenizer
        self.augment = augment
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        if self.tokenizer is not None and any(s.text is None for s in self.samples):
            raise ValueError("a tokenizer was given but some samples have no text")
        per_epoch = len(self.samples) // (config.batch_size * world_size)
        if per_epoch < 1:
            raise ValueError(f"{len(self.samples)} training samples do not fill one batch of {config.batch_size} "
                             f"on each of {world_size} rank(s): lower train.batch_size")
        self.batches_per_rank = per_epoch
        self.epoch, self.step, self.skipped = 0, 0, 0

    def __len__(self) -> int:
        return self.batches_per_rank

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions in the sample list of epoch ``epoch``, the same on every rank."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.samples))

    def normalize(self, video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.transform.normalize(video, dtype)

    def __iter__(self) -> Iterator[dict]:
        workers = self.config.num_workers
        batches = _EpochBatches(self, self.epoch)
        loader = DataLoader(batches, batch_size=None, sampler=range(self.step, len(self)), num_workers=workers,
                            pin_memory=self.pin_memory, persistent_workers=False)
        for batch in loader:
            self.skipped += batch.pop("skipped")
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def skip_counts(self) -> dict[str, int]:
        """Samples replaced so far on this rank because their video could not be decoded."""
        return {"undecodable": self.skipped}

    def _settings(self) -> dict[str, int]:
        c = self.config
        return {"seed": c.seed, "rank": self.rank, "world_size": self.world_size, "batch_size": c.batch_size,
                "samples": len(self.samples), "repeats": c.repeats}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "skipped": self.skipped, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        state = {"repeats": 1, **state}  # saved before repeated augmentation: one clip per video
        check_resume_settings(state, self._settings(), "the fine-tuning loader")
        self.epoch, self.step, self.skipped = int(state["epoch"]), int(state["step"]), int(state["skipped"])
