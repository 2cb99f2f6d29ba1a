"""Webdataset shards: the writer used by curation and the synthetic generator, and the training stream.

A shard is a plain tar of ``{key}.mp4``, ``{key}.txt`` (caption) and ``{key}.json`` (every metadata
field plus the caption). Keys are dot-free (``{shard:05d}{index:06d}``) because webdataset splits a
member name at its first dot. ``sizes.json`` (``{tar name: n_samples}``), written last, marks a
shard set complete and lets the stream compute a fixed epoch length without reading any tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from typing_extensions import Self
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from viclip.data.transforms import VideoTransform, video_transform
from viclip.data.video import VideoDecodeError, read_video

log = logging.getLogger(__name__)

SIZES_FILE = "sizes.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardWriter:
    """Write samples into numbered tars under ``out_dir``, starting a new tar at a count or size limit.

    Each tar is written as ``.{name}.tmp`` and renamed when complete, so a crashed job never leaves a
    truncated tar under a final name. ``close()`` writes ``sizes.json`` atomically; when
    ``start_shard > 0`` (a later job appending to the same directory) existing entries are kept.
    """

    def __init__(self, out_dir: str | os.PathLike, max_samples: int = 1000, max_bytes: int = 1 << 30,
                 start_shard: int = 0) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ValueError(f"ShardWriter needs max_samples >= 1 and max_bytes >= 1, got {max_samples}, "
                             f"{max_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shard = self.start_shard = start_shard
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._count = 0
        self._bytes = 0
        self._closed = False

    def _name(self, shard: int) -> str:
        return f"{shard:05d}.tar"

    def _open_next(self) -> None:
        self._tmp_path = self.out_dir / f".{self._name(self.shard)}.tmp"
        # stays open across write() calls; closed in _finish_current or __exit__
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = self._bytes = 0

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        name = self._name(self.shard)
        os.replace(self._tmp_path, self.out_dir / name)
        self.sizes[name] = self._count
        self._tar, self._tmp_path = None, None
        self.shard += 1

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: same input, same bytes
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, mp4: bytes, caption: str, meta: dict[str, Any] | None = None) -> str:
        """Add one sample and return its key. ``meta`` must be JSON-serialisable."""
        if self._closed:
            raise RuntimeError("ShardWriter.write called after close()")
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a str, got {type(caption).__name__}")
        record = {**(meta or {}), "caption": caption}
        js = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
        txt = caption.encode()
        size = len(mp4) + len(js) + len(txt) + 3 * 1536  # three headers plus padding, roughly
        if self._tar is not None and (self._count >= self.max_samples or self._bytes + size > self.max_bytes):
            self._finish_current()
        if self._tar is None:
            self._open_next()
        key = f"{self.shard:05d}{self._count:06d}"
        self._add(f"{key}.mp4", mp4)
        self._add(f"{key}.txt", txt)
        self._add(f"{key}.json", js)
        self._count += 1
        self._bytes += size
        return key

    def close(self) -> dict[str, int]:
        """Finish the open tar, write ``sizes.json`` atomically and return ``{tar name: n_samples}``."""
        if self._closed:
            return self.sizes
        self._finish_current()
        sizes_path = self.out_dir / SIZES_FILE
        keep = self.start_shard > 0 and sizes_path.exists()
        merged = json.loads(sizes_path.read_text()) if keep else {}
        merged.update(self.sizes)
        _atomic_write_text(sizes_path, json.dumps(dict(sorted(merged.items())), indent=1))
        self._closed = True
        return self.sizes

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no temp file behind and no sizes.json claiming completeness
            self._tar.close()
            self._tmp_path.unlink(missing_ok=True)
            self._tar = None


# ----------------------------------------------------------------------------------------------
# Training stream
# ----------------------------------------------------------------------------------------------

SKIP_REASONS = ("corrupt_shard", "missing_video", "missing_caption", "bad_json", "undecodable")


@dataclass
class Corpus:
    """One source of shards: a brace pattern (``dir/{00000..00099}.tar``, ``::`` joins several), a list
    of URLs, or a local directory holding tars and ``sizes.json``. Any fsspec URL works for tars.

    ``num_samples`` overrides the size read from ``sizes.json`` beside the tars.
    """

    shards: str | list[str]
    weight: float = 1.0
    name: str | None = None
    num_samples: int | None = None


CorporaSpec = Corpus | str | os.PathLike | Sequence[Corpus | str | dict] | Mapping[str, dict]


def as_corpora(spec: CorporaSpec) -> list[Corpus]:
    """Corpora from a Corpus, a shard pattern or directory, a list of those or of dicts, or a mapping
    ``{name: {shards, weight, num_samples}}`` (the ``data.sources`` group of the Hydra config)."""
    if isinstance(spec, (str, os.PathLike, Corpus)):
        spec = [spec]
    elif isinstance(spec, Mapping):
        spec = [{"name": name, **dict(fields)} for name, fields in spec.items()]
    corpora = [c if isinstance(c, Corpus) else Corpus(**c) if isinstance(c, Mapping) else Corpus(os.fspath(c))
               for c in spec]
    if not corpora or any(c.weight <= 0 for c in corpora):
        raise ValueError(f"give at least one corpus, each with a weight > 0; got {spec!r:.300}")
    return corpora


def _is_url(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Brace-expanded shard list; a local directory stands for the tars named in its ``sizes.json``."""
    items = [os.fspath(urls)] if isinstance(urls, (str, os.PathLike)) else [os.fspath(u) for u in urls]
    shards: list[str] = []
    for item in items:
        if not _is_url(item) and os.path.isdir(item):
            sizes = Path(item) / SIZES_FILE
            names = sorted(json.loads(sizes.read_text())) if sizes.exists() else sorted(
                p.name for p in Path(item).glob("*.tar"))
            shards += [os.path.join(item, n) for n in names]
        else:
            shards += expand_urls(item)
    if not shards:
        raise ValueError(f"no shards found for {urls!r}")
    return shards


def _open(url: str) -> IO[bytes]:
    if url.startswith("pipe:"):
        return gopen(url, "rb")
    if "://" in url:
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def _read_sizes(directory: str) -> dict[str, int] | None:
    url = f"{directory.rstrip('/')}/{SIZES_FILE}"
    try:
        with _open(url) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


def corpus_num_samples(corpus: Corpus, shards: list[str]) -> int:
    """Samples in a corpus: ``num_samples`` if given, else the ``sizes.json`` entries of its shards."""
    if corpus.num_samples is not None:
        return corpus.num_samples
    by_dir: dict[str, list[str]] = {}
    for shard in shards:
        directory, name = shard.rsplit("/", 1) if "/" in shard else (".", shard)
        by_dir.setdefault(directory, []).append(name)
    total = 0
    for directory, names in by_dir.items():
        sizes = _read_sizes(directory)
        missing = [n for n in names if sizes is None or n not in sizes]
        if missing:
            raise ValueError(f"corpus {corpus.name or corpus.shards!r}: no size for {missing[:3]} in "
                             f"{directory}/{SIZES_FILE}; set num_samples for shards without sizes.json")
        total += sum(sizes[n] for n in names)
    return total


def iter_tar_samples(fileobj: IO[bytes]) -> Iterator[dict[str, bytes | str]]:
    """Group consecutive tar members by key (the name up to the first dot of its base name).

    Reads the tar as a stream, so it works on pipes and network files; a truncated or corrupt tar
    raises ``tarfile.ReadError`` after yielding the samples before the damage.
    """
    current: dict[str, bytes | str] | None = None
    # reads of 1 MiB, not tarfile's 10 KiB records: a 1 MB clip then costs a few reads, not a hundred
    with tarfile.open(fileobj=fileobj, mode="r|*", bufsize=1 << 20) as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            key, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{directory}/{key}" if directory else key
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield current


def stable_hash64(text: str) -> int:
    """A signed int64 from blake2b, the same in every process and run (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


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

    ``transform(frames, generator=...)`` maps uint8 [T, H, W, 3] to float [T, 3, S, S] (default: the
    official training transform at ``image_size``); the stream passes a generator seeded per sample.
    ``shuffle_buffer`` holds encoded samples: memory per worker is about buffer x mean sample bytes.
    ``decode_size`` resizes in the decoder (an int is the short side) before the transform.
    """

    def __init__(
        self,
        corpora: CorporaSpec,
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        num_frames: int = 8,
        transform: Callable[..., torch.Tensor] | None = None,
        image_size: int = 224,
        epoch_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        sampling: str = "random",
        decode_size: int | tuple[int, int] | None = None,
        backend: str = "auto",
        max_log_lines_per_shard: int = 5,
        max_consecutive_skips: int = 1000,
    ) -> None:
        self.corpora = as_corpora(corpora)
        self.shards = [expand_shards(c.shards) for c in self.corpora]
        self.names = [c.name or f"corpus{i}" for i, c in enumerate(self.corpora)]
        if epoch_samples is None:
            epoch_samples = sum(corpus_num_samples(c, s) for c, s in zip(self.corpora, self.shards))
        if rank is None or world_size is None:
            dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist_on else int(os.environ.get("RANK", "0"))
            world_size = (torch.distributed.get_world_size() if dist_on
                          else int(os.environ.get("WORLD_SIZE", "1")))
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.batch_size, self.num_frames, self.epoch_samples = batch_size, num_frames, epoch_samples
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, max(1, shuffle_buffer)
        self.tokenizer = tokenizer
        self.transform = transform if transform is not None else video_transform(True, image_size)
        self.sampling, self.decode_size, self.backend = sampling, decode_size, backend
        self.max_log_lines_per_shard = max_log_lines_per_shard
        self.max_consecutive_skips = max_consecutive_skips
        self.batches_per_rank = epoch_samples // (batch_size * world_size)
        if self.batches_per_rank < 1:
            raise ValueError(f"epoch_samples={epoch_samples} is less than one global batch "
                             f"(batch_size {batch_size} x world_size {world_size})")
        self.epoch = 0
        self.resume: dict[int, tuple[int, int]] = {}  # worker -> (batches done, samples taken)

    @property
    def slots_per_rank(self) -> int:
        return max(1, self.num_workers)

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
                rng = np.random.default_rng(_seed(self.seed, self.epoch, corpus, cycle))
                order = rng.permutation(len(shards))
            yield shards[order[position % len(shards)]]
            position += n_slots

    def _corpus_samples(self, corpus: int, slot: int, skips: _SkipLog) -> Iterator[dict]:
        empty = set()  # distinct shards read without a sample since the last sample
        for shard in self._shard_schedule(corpus, slot):
            n = 0
            try:
                with _open(shard) as f:
                    for sample in iter_tar_samples(f):
                        sample["__shard__"], sample["__corpus__"] = shard, corpus
                        n += 1
                        yield sample
            except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                skips.add("corrupt_shard", shard, None, f"{type(e).__name__}: {e}")
            empty = set() if n else empty | {shard}
            if len(empty) == len(set(self.shards[corpus])):
                raise RuntimeError(f"corpus {self.names[corpus]}: none of its {len(empty)} shards holds a "
                                   f"readable sample (last read: {shard})")

    def _buffered_samples(self, slot: int, skips: _SkipLog) -> Iterator[dict]:
        sources = [self._corpus_samples(c, slot, skips) for c in range(len(self.corpora))]
        weights = np.array([c.weight for c in self.corpora], dtype=float)
        weights /= weights.sum()
        mix = np.random.default_rng(_seed(self.seed, self.epoch, slot, 1))
        pick = np.random.default_rng(_seed(self.seed, self.epoch, slot, 2))
        buffer: list[dict] = []
        while True:
            sample = next(sources[int(mix.choice(len(sources), p=weights))])
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = int(pick.integers(len(buffer)))
            buffer[i], sample = sample, buffer[i]
            yield sample

    # -- decoding and batching --

    def _prepare(self, sample: dict, taken: int, slot: int, skips: _SkipLog,
                 out: torch.Tensor | None) -> dict | None:
        shard, key = sample["__shard__"], sample["__key__"]
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                skips.add("bad_json", shard, key, str(e))
                return None
        caption = sample["txt"].decode("utf-8", "replace") if "txt" in sample else meta.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            skips.add("missing_caption", shard, key)
            return None
        video = sample.get("mp4")
        if video is None:
            skips.add("missing_video", shard, key)
            return None
        seed = _seed(self.seed, self.epoch, slot, taken)
        try:
            frames = read_video(video, self.num_frames, self.sampling, size=self.decode_size,
                                backend=self.backend, rng=np.random.default_rng(seed), name=f"{shard}:{key}")
        except VideoDecodeError as e:
            skips.add("undecodable", shard, key, str(e))
            return None
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        corpus = sample["__corpus__"]
        base = os.path.basename(key)
        index = corpus * 10**11 + int(base) if base.isdigit() and len(base) <= 11 else \
            stable_hash64(f"{self.names[corpus]}/{key}") & (2**63 - 1)
        return {
            "video": self.transform(frames, generator=generator, **({} if out is None else {"out": out})),
            "caption": caption.strip(),
            "video_id": stable_hash64(str(meta.get("video_id", f"{self.names[corpus]}/{key}"))),
            "index": index,
            "corpus": corpus,
            "key": f"{shard}:{key}",
        }

    def _video_batch(self, shared: bool) -> torch.Tensor | None:
        """The batch's video tensor, filled in place by our transform (no stack, and no copy into
        shared memory when a worker hands it over); None for other transforms, which get stacked.

        A uint8 batch keeps the decoder's channels-last memory order (shape [B, T, 3, S, S], strides
        of [B, T, S, S, 3]), so each resized clip is copied in without a transpose; ``normalize``
        returns a contiguous tensor."""
        if not isinstance(self.transform, VideoTransform):
            return None
        b, t, s = self.batch_size, self.num_frames, self.transform.image_size
        if self.transform.out_dtype == torch.uint8:
            video = torch.empty((b, t, s, s, 3), dtype=torch.uint8).permute(0, 1, 4, 2, 3)
        else:
            video = torch.empty((b, t, 3, s, s))
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
            raise RuntimeError(f"VideoTextStream was built for num_workers={self.num_workers} but runs in a "
                               f"DataLoader with {info.num_workers}: use VideoTextLoader")
        slot = self.rank * self.slots_per_rank + worker
        done, taken = self.resume.get(worker, (0, 0))
        if done >= self.worker_quota(worker):
            return
        skips = _SkipLog(self.max_log_lines_per_shard)
        stream = self._buffered_samples(slot, skips)
        for _ in range(taken):  # fast-forward: read, do not decode, what this worker already took
            next(stream)
        skips.pop()  # shards already counted before the restart
        for batch_number in range(done, self.worker_quota(worker)):
            items, run = [], 0
            video = self._video_batch(shared=info is not None)
            while len(items) < self.batch_size:
                sample = next(stream)
                taken += 1
                item = self._prepare(sample, taken, slot, skips, None if video is None else video[len(items)])
                if item is None:
                    run += 1
                    if run >= self.max_consecutive_skips:
                        last = f"{sample['__shard__']}:{sample['__key__']}"
                        raise RuntimeError(f"{run} samples in a row were unusable (last: {last}); "
                                           "see the warnings above")
                    continue
                run = 0
                items.append(item)
            batch = self._collate(items, video)
            skip_delta, shard_delta = skips.pop()
            batch["_state"] = {"worker": worker, "batches": batch_number + 1, "taken": taken,
                               "skips": skip_delta, "shard_skips": shard_delta}
            yield batch


class VideoTextLoader:
    """The DataLoader over a :class:`VideoTextStream`, with its position and skip counts.

    ``len(loader)`` batches per epoch on every rank. Iterating runs the rest of the current epoch
    and then moves to the next, so ``for epoch ...: for batch in loader`` needs no ``set_epoch``.
    ``state_dict()`` records the batches handed out so far (save it after the step that used the
    last one); ``load_state_dict`` makes the next iteration continue that epoch with the batches
    not yet given, none twice. Each batch is a dict: ``video`` [B, T, 3, H, W] (float, or uint8 from
    a transform built with ``normalize=False``: :meth:`normalize` it on the device), ``text``
    LongTensor [B, L], ``caption`` list[str], ``video_id`` int64 (hash of the json's source video
    id), ``index`` int64 (sample id, unique per corpus sample), ``corpus`` int64, ``key`` list[str].
    """

    def __init__(self, dataset: VideoTextStream, pin_memory: bool = False, prefetch_factor: int = 2) -> None:
        self.dataset = dataset
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.epoch = dataset.epoch
        self.step = 0
        self._workers: dict[int, tuple[int, int]] = {}
        self.skips: Counter = Counter()
        self.shard_skips: dict[str, Counter] = {}

    def __len__(self) -> int:
        return self.dataset.batches_per_rank

    def normalize(self, video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A batch's ``video`` (moved to its device) as the model's input: uint8 batches are
        normalised there by the stream's transform, float batches only cast."""
        if video.dtype == torch.uint8 and isinstance(self.dataset.transform, VideoTransform):
            return self.dataset.transform.normalize(video, dtype)
        return video.to(dtype)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch, unless the loaded state is already inside it."""
        if epoch != self.epoch:
            self.epoch, self.step, self._workers = epoch, 0, {}

    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset
        ds.epoch, ds.resume = self.epoch, dict(self._workers)
        workers = ds.num_workers
        loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if workers else None)
        for batch in loader:
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

    def state_dict(self) -> dict:
        ds = self.dataset
        return {"epoch": self.epoch, "step": self.step,
                "workers": {str(w): list(v) for w, v in self._workers.items()},
                "seed": ds.seed, "rank": ds.rank, "world_size": ds.world_size, "num_workers": ds.num_workers,
                "batch_size": ds.batch_size, "batches_per_rank": ds.batches_per_rank,
                "skips": dict(self.skips)}

    def load_state_dict(self, state: dict) -> None:
        ds = self.dataset
        for field in ("seed", "rank", "world_size", "num_workers", "batch_size", "batches_per_rank"):
            if state[field] != getattr(ds, field):
                raise ValueError(f"cannot resume the data stream: {field} was {state[field]} and is now "
                                 f"{getattr(ds, field)}; an exact resume needs the same data settings")
        self.epoch, self.step = state["epoch"], state["step"]
        self._workers = {int(w): (int(v[0]), int(v[1])) for w, v in state["workers"].items()}
        self.skips = Counter(state.get("skips", {}))


def build_train_loader(
    corpora: CorporaSpec,
    tokenizer: Callable[[list[str]], torch.Tensor],
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    **stream_kwargs: Any,
) -> VideoTextLoader:
    """The training loader for this rank; ``tokenizer`` is e.g. ``viclip.tokenize``.

    ``stream_kwargs`` go to :class:`VideoTextStream` (num_frames, transform, image_size, epoch_samples,
    rank, world_size, seed, shuffle_buffer, sampling, decode_size, backend, ...).
    """
    stream = VideoTextStream(corpora, tokenizer, batch_size, num_workers=num_workers, **stream_kwargs)
    return VideoTextLoader(stream, pin_memory=pin_memory)
