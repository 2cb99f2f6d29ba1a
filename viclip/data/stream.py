"""The training stream: batches of decoded clips with tokens from webdataset shards, and its loader.

:class:`StreamConfig` holds every setting of the stream; :func:`build_train_loader` turns it, a
tokenizer and a transform into this rank's :class:`VideoTextLoader`, which hands out a fixed number
of batches per epoch and resumes mid-epoch from its ``state_dict``. Tars are read by
:mod:`viclip.data.tars`.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from viclip.data.corpora import CorporaSpec, as_corpora, corpus_num_samples
from viclip.data.formats import VideoDecodeError
from viclip.data.samples import SKIP_REASONS, SkipSample, sample_fields
from viclip.data.tars import MAX_MEMBER_BYTES, expand_shards, iter_tar_samples, open_shard, stable_hash64
from viclip.data.transforms import VideoTransform
from viclip.data.video import GPU_BACKEND, decode_device, read_video
from viclip.errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    """Every setting of the training stream: what it reads, how much makes an epoch, how it batches.

    ``epoch_samples`` defaults to the corpora's ``sizes.json`` totals. ``shuffle_buffer`` holds
    encoded samples: memory per worker is about buffer x mean sample bytes. ``decode_size`` resizes
    in the decoder (an int is the short side) before the transform. A rank logs the first
    ``max_log_lines_per_shard`` skipped samples of each shard, and gives up after
    ``max_consecutive_skips`` unusable samples in a row. A tar member claiming more than
    ``max_member_bytes`` is skipped unread; a caption of fewer than ``min_caption_words`` words after
    the official cleaning is skipped (the official loader's rule, 2; 1 keeps every non-empty caption).
    """

    corpora: CorporaSpec
    batch_size: int
    num_frames: int = 8
    epoch_samples: int | None = None
    num_workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 256
    sampling: str = "random"
    decode_size: int | tuple[int, int] | None = None
    backend: str = "auto"
    max_log_lines_per_shard: int = 5
    max_consecutive_skips: int = 1000
    max_member_bytes: int = MAX_MEMBER_BYTES
    min_caption_words: int = 2


def _seed(*parts: int) -> list[int]:
    return [int(p) & 0xFFFFFFFF for p in parts]


class _SkipLog:
    """Counts skipped samples by reason and shard, and logs the first few per shard with their key."""

    def __init__(self, max_lines_per_shard: int) -> None:
        self.max_lines = max_lines_per_shard
        self.delta: Counter = Counter()
        self.delta_by_shard: dict[str, Counter] = {}
        self._lines: Counter = Counter()

    def add(self, reason: str, shard: str, key: str | None, detail: str = "") -> None:
        self.delta[reason] += 1
        self.delta_by_shard.setdefault(shard, Counter())[reason] += 1
        if self._lines[shard] < self.max_lines:
            self._lines[shard] += 1
            where = f"{shard}:{key}" if key else shard
            log.warning("skipped %s (%s)%s", where, reason, f": {detail[:300]}" if detail else "")

    def pop(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        out = dict(self.delta), {s: dict(c) for s, c in self.delta_by_shard.items()}
        self.delta, self.delta_by_shard = Counter(), {}
        return out


class VideoTextStream(IterableDataset):
    """Batches of decoded, transformed clips with tokens, from webdataset shards of one or more corpora.

    Every rank yields exactly :attr:`batches_per_rank` batches per epoch, split over its DataLoader
    workers, whatever the shards hold (uneven, empty, corrupt, fewer than ranks x workers), so no
    rank waits on another. Each (rank, worker) slot reads an endless, deterministic shard schedule:
    every epoch each corpus's shards are permuted with a seed of (seed, epoch, corpus, cycle) and
    the concatenated permutations are dealt round-robin to the ``world_size x num_workers`` slots,
    so within an epoch every shard is read once before any is read again. Samples of the corpora
    are mixed by weight, shuffled in a buffer, then decoded; bad samples are skipped and counted.

    Everything a slot does is a function of (seed, epoch, slot, samples taken from the buffer), so
    a restart fast-forwards each worker by reading, not decoding, the samples it had already taken.
    Use it through :class:`VideoTextLoader`, which keeps that state.

    ``transform(frames, generator=...)`` maps uint8 [T, H, W, 3] to [T, 3, S, S] (default: the
    official training transform); the stream passes a generator seeded per sample.
    """

    def __init__(self, config: StreamConfig, tokenizer: Callable[[list[str]], torch.Tensor],
                 transform: Callable[..., torch.Tensor] | None = None, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if config.backend == GPU_BACKEND and config.num_workers:
            raise ConfigError(f"backend={GPU_BACKEND!r} decodes in the main process: num_workers must be 0, got "
                              f"{config.num_workers} (viclip.data.video.decode_plan picks both)")
        self.config = config
        self.corpora = as_corpora(config.corpora)
        self.shards = [expand_shards(c.shards) for c in self.corpora]
        self.names = [c.name or f"corpus{i}" for i, c in enumerate(self.corpora)]
        epoch_samples = config.epoch_samples
        if epoch_samples is None:
            epoch_samples = sum(corpus_num_samples(c, s) for c, s in zip(self.corpora, self.shards))
        if rank is None or world_size is None:
            dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist_on else int(os.environ.get("RANK", "0"))
            world_size = (torch.distributed.get_world_size() if dist_on
                          else int(os.environ.get("WORLD_SIZE", "1")))
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self.tokenizer = tokenizer
        self.transform = transform if transform is not None else VideoTransform(train=True)
        self.batches_per_rank = epoch_samples // (config.batch_size * world_size)
        if self.batches_per_rank < 1:
            raise ConfigError(f"an epoch of {epoch_samples} clips is less than one global batch (batch_size "
                              f"{config.batch_size} x world_size {world_size}): set train.batch_size (or the "
                              f"phase's batch_size) to at most {max(1, epoch_samples // world_size)}")
        self.epoch = 0
        self.resume: dict[int, tuple[int, int]] = {}  # worker -> (batches done, samples taken)

    @property
    def slots_per_rank(self) -> int:
        return max(1, self.config.num_workers)

    def worker_quota(self, worker: int) -> int:
        """Batches this rank's ``worker`` yields per epoch (the quotas add up to ``batches_per_rank``)."""
        base, extra = divmod(self.batches_per_rank, self.slots_per_rank)
        return base + (worker < extra)

    # -- the sample stream of one slot, before decoding --

    def _shard_schedule(self, corpus: int, slot: int) -> Iterator[str]:
        shards, n_slots = self.shards[corpus], self.world_size * self.slots_per_rank
        position, cycle, order = slot, -1, None
        while True:
            c = position // len(shards)
            if c != cycle:
                cycle = c
                rng = np.random.default_rng(_seed(self.config.seed, self.epoch, corpus, cycle))
                order = rng.permutation(len(shards))
            yield shards[order[position % len(shards)]]
            position += n_slots

    def _corpus_samples(self, corpus: int, slot: int, skips: _SkipLog) -> Iterator[dict]:
        empty = set()  # distinct shards read without a sample since the last sample
        for shard in self._shard_schedule(corpus, slot):
            n = 0
            try:
                with open_shard(shard) as f:
                    for sample in iter_tar_samples(f, self.config.max_member_bytes):
                        sample["__shard__"], sample["__corpus__"] = shard, corpus
                        n += 1
                        yield sample
            except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                skips.add("corrupt_shard", shard, None, f"{type(e).__name__}: {e}")
            empty = set() if n else empty | {shard}
            if len(empty) == len(set(self.shards[corpus])):
                raise DataError(f"corpus {self.names[corpus]}: none of its {len(empty)} shards holds a "
                                f"readable sample (last read: {shard})")

    def _buffered_samples(self, slot: int, skips: _SkipLog) -> Iterator[dict]:
        sources = [self._corpus_samples(c, slot, skips) for c in range(len(self.corpora))]
        weights = np.array([c.weight for c in self.corpora], dtype=float)
        weights /= weights.sum()
        mix = np.random.default_rng(_seed(self.config.seed, self.epoch, slot, 1))
        pick = np.random.default_rng(_seed(self.config.seed, self.epoch, slot, 2))
        buffer: list[dict] = []
        while True:
            sample = next(sources[int(mix.choice(len(sources), p=weights))])
            if len(buffer) < max(1, self.config.shuffle_buffer):
                buffer.append(sample)
                continue
            i = int(pick.integers(len(buffer)))
            buffer[i], sample = sample, buffer[i]
            yield sample

    # -- decoding and batching --

    def _prepare(self, sample: dict, taken: int, slot: int, skips: _SkipLog,
                 out: torch.Tensor | None) -> dict | None:
        shard, key = sample["__shard__"], sample["__key__"]
        try:
            caption, meta, video = sample_fields(sample, self.config.min_caption_words)
        except SkipSample as e:
            skips.add(e.reason, shard, key, e.detail)
            return None
        seed = _seed(self.config.seed, self.epoch, slot, taken)
        try:
            frames = read_video(video, self.config.num_frames, self.config.sampling, size=self.config.decode_size,
                                backend=self.config.backend, rng=np.random.default_rng(seed), name=f"{shard}:{key}")
        except VideoDecodeError as e:
            skips.add("undecodable", shard, key, str(e))
            return None
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        identity = f"{shard}:{key}"  # unique per clip: shard directories restart their keys at 00000000000
        return {
            "video": self.transform(frames, generator=generator, **({} if out is None else {"out": out})),
            "caption": caption,
            "video_id": stable_hash64(str(meta.get("video_id", identity))),
            "index": stable_hash64(identity) & (2**63 - 1),
            "corpus": sample["__corpus__"],
            "key": identity,
        }

    def _video_batch(self, shared: bool) -> torch.Tensor | None:
        """The batch's video tensor, filled in place by our transform (no stack, and no copy into
        shared memory when a worker hands it over); None for other transforms, which get stacked.

        A uint8 batch keeps the decoder's channels-last memory order (shape [B, T, 3, S, S], strides
        of [B, T, S, S, 3]), so each resized clip is copied in without a transpose; ``normalize``
        returns a contiguous tensor."""
        if not isinstance(self.transform, VideoTransform):
            return None
        b, t, s = self.config.batch_size, self.config.num_frames, self.transform.image_size
        device = decode_device(self.config.backend)  # GPU-decoded clips fill a batch on the GPU
        if self.transform.out_dtype == torch.uint8:
            video = torch.empty((b, t, s, s, 3), dtype=torch.uint8, device=device).permute(0, 1, 4, 2, 3)
        else:
            video = torch.empty((b, t, 3, s, s), device=device)
        return video.share_memory_() if shared else video

    def _collate(self, items: list[dict], video: torch.Tensor | None) -> dict:
        captions = [it["caption"] for it in items]
        return {
            "video": video if video is not None else torch.stack([it["video"] for it in items]),
            "text": self.tokenizer(captions),
            "caption": captions,
            "video_id": torch.tensor([it["video_id"] for it in items], dtype=torch.int64),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
            "corpus": torch.tensor([it["corpus"] for it in items], dtype=torch.int64),
            "key": [it["key"] for it in items],
        }

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.slots_per_rank:
            raise RuntimeError(f"VideoTextStream was built for num_workers={self.config.num_workers} but runs in a "
                               f"DataLoader with {info.num_workers}: use VideoTextLoader")
        slot = self.rank * self.slots_per_rank + worker
        done, taken = self.resume.get(worker, (0, 0))
        if done >= self.worker_quota(worker):
            return
        skips = _SkipLog(self.config.max_log_lines_per_shard)
        stream = self._buffered_samples(slot, skips)
        for _ in range(taken):  # fast-forward: read, do not decode, what this worker already took
            next(stream)
        skips.pop()  # shards already counted before the restart
        for batch_number in range(done, self.worker_quota(worker)):
            items, run = [], 0
            video = self._video_batch(shared=info is not None)
            while len(items) < self.config.batch_size:
                sample = next(stream)
                taken += 1
                item = self._prepare(sample, taken, slot, skips, None if video is None else video[len(items)])
                if item is None:
                    run += 1
                    if run >= self.config.max_consecutive_skips:
                        last = f"{sample['__shard__']}:{sample['__key__']}"
                        raise DataError(f"{run} samples in a row were unusable (last: {last}); see the warnings "
                                        "above")
                    continue
                run = 0
                items.append(item)
            batch = self._collate(items, video)
            skip_delta, shard_delta = skips.pop()
            batch["_state"] = {"worker": worker, "batches": batch_number + 1, "taken": taken,
                               "skips": skip_delta, "shard_skips": shard_delta}
            yield batch


def _next_batch(batches: Iterator[dict]) -> dict | None:
    """The DataLoader's next batch; a user error raised in a worker keeps its own one line (torch puts
    the worker's traceback into the message; the cause keeps it for ``--debug``)."""
    try:
        return next(batches, None)
    except UserError as e:
        lines = str(e).rstrip().splitlines()
        if len(lines) < 2 or not lines[0].startswith("Caught "):
            raise
        raise type(e)(lines[-1].split(": ", 1)[-1]) from e


def check_resume_settings(state: dict, settings: dict[str, int], what: str) -> None:
    """Refuse a loader state saved under other batch-deciding ``settings``: that resume would not be exact."""
    for field, value in settings.items():
        if field not in state:
            raise ConfigError(f"cannot resume {what}: the saved state has no {field} (now {value}); it was written "
                              "by a version that did not record it, so an exact resume cannot be checked")
        if state[field] != value:
            raise ConfigError(f"cannot resume {what}: {field} was {state[field]} and is now {value}; an exact "
                              "resume needs the same data settings")


class VideoTextLoader:
    """The DataLoader over a :class:`VideoTextStream`, with its position and skip counts.

    ``len(loader)`` batches per epoch on every rank. Iterating runs the rest of the current epoch
    and then moves to the next, so ``for epoch ...: for batch in loader`` needs no ``set_epoch``.
    ``state_dict()`` records the batches handed out so far (save it after the step that used the
    last one); ``load_state_dict`` makes the next iteration continue that epoch with the batches
    not yet given, none twice. Each batch is a dict: ``video`` [B, T, 3, H, W] (float, or uint8 from
    a transform built with ``normalize=False``: :meth:`normalize` it on the device), ``text``
    LongTensor [B, L], ``caption`` list[str], ``video_id`` int64 (hash of the json's source video
    id), ``index`` int64 (hash of ``key``: one per clip, the loss's positives), ``corpus`` int64,
    ``key`` list[str] (``shard:member key``).
    """

    def __init__(self, stream: VideoTextStream, pin_memory: bool = False, prefetch_factor: int = 2) -> None:
        self.stream = stream
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.epoch = stream.epoch
        self.step = 0
        self._workers: dict[int, tuple[int, int]] = {}
        self.skips: Counter = Counter()
        self.shard_skips: dict[str, Counter] = {}

    def __len__(self) -> int:
        return self.stream.batches_per_rank

    def normalize(self, video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A batch's ``video`` (moved to its device) as the model's input: uint8 batches are
        normalised there by the stream's transform, float batches only cast."""
        if video.dtype == torch.uint8 and isinstance(self.stream.transform, VideoTransform):
            return self.stream.transform.normalize(video, dtype)
        return video.to(dtype)

    def __iter__(self) -> Iterator[dict]:
        self.stream.epoch, self.stream.resume = self.epoch, dict(self._workers)
        workers = self.stream.config.num_workers
        loader = DataLoader(self.stream, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if workers else None)
        batches = iter(loader)
        while (batch := _next_batch(batches)) is not None:
            state = batch.pop("_state")
            self._workers[state["worker"]] = (state["batches"], state["taken"])
            self.skips.update(state["skips"])
            for shard, counts in state["shard_skips"].items():
                self.shard_skips.setdefault(shard, Counter()).update(counts)
            self.step += 1
            yield batch
        if self.step != len(self):
            raise RuntimeError(f"epoch {self.epoch} ended after {self.step} of {len(self)} batches")
        self.epoch, self.step, self._workers = self.epoch + 1, 0, {}

    def skip_counts(self) -> dict[str, int]:
        """Samples skipped so far on this rank, by reason (``SKIP_REASONS``); for the training log."""
        return {reason: self.skips.get(reason, 0) for reason in SKIP_REASONS}

    def _settings(self) -> dict[str, int]:
        """What decides which batch is which: a resume needs them unchanged."""
        stream, config = self.stream, self.stream.config
        return {"seed": config.seed, "rank": stream.rank, "world_size": stream.world_size,
                "num_workers": config.num_workers, "batch_size": config.batch_size,
                "batches_per_rank": stream.batches_per_rank, "min_caption_words": config.min_caption_words}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step,
                "workers": {str(w): list(v) for w, v in self._workers.items()},
                **self._settings(), "skips": dict(self.skips)}

    def load_state_dict(self, state: dict) -> None:
        state = {"min_caption_words": 1, **state}  # saved before the switch: every non-empty caption was kept
        check_resume_settings(state, self._settings(), "the data stream")
        self.epoch, self.step = state["epoch"], state["step"]
        self._workers = {int(w): (int(v[0]), int(v[1])) for w, v in state["workers"].items()}
        self.skips = Counter(state.get("skips", {}))


def build_train_loader(config: StreamConfig, tokenizer: Callable[[list[str]], torch.Tensor],
                       transform: Callable[..., torch.Tensor] | None = None, rank: int | None = None,
                       world_size: int | None = None, pin_memory: bool = False) -> VideoTextLoader:
    """This rank's training loader; ``tokenizer`` is e.g. ``viclip.tokenize``, ``transform`` defaults
    to the official training transform; rank and world size default to torch.distributed's (else
    ``RANK`` / ``WORLD_SIZE``)."""
    return VideoTextLoader(VideoTextStream(config, tokenizer, transform, rank, world_size), pin_memory=pin_memory)
