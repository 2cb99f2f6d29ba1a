"""Webdataset tars: the writer used by curation and the synthetic generator, shard lists and member reading.

A shard is a plain tar of ``{key}.mp4``, ``{key}.txt`` (caption) and ``{key}.json`` (every metadata
field plus the caption). Keys are dot-free (``{shard:05d}{index:06d}``) because webdataset splits a
member name at its first dot. ``sizes.json`` (``{tar name: n_samples}``), written last, marks a
shard set complete and lets the training stream compute a fixed epoch length without reading any tar.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import fsspec
from typing_extensions import Self
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from viclip.atomic import atomic_path, atomic_write, join, local_path

SIZES_FILE = "sizes.json"


class ShardWriter:
    """Write samples into numbered tars under ``out_dir``, starting a new tar at a count or size limit.

    ``out_dir`` is a local directory or any fsspec URL. Each tar is written through
    :func:`viclip.atomic.atomic_path` (renamed into place locally, uploaded whole elsewhere), so a
    crashed job never leaves a truncated tar under a final name; the temporary files a killed job left
    for a local shard are removed when that shard is written again. ``close()`` writes ``sizes.json``
    last, atomically; when ``start_shard > 0`` (a later job appending to the same directory) existing
    entries are kept.
    """

    def __init__(self, out_dir: str | os.PathLike, max_samples: int = 1000, max_bytes: int = 1 << 30,
                 start_shard: int = 0) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ValueError(f"ShardWriter needs max_samples >= 1 and max_bytes >= 1, got {max_samples}, "
                             f"{max_bytes}")
        self.out_dir = os.fspath(out_dir)
        self._local_dir = local_path(out_dir)  # None on an object store: nothing to create or clean there
        if self._local_dir is not None:
            self._local_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shard = self.start_shard = start_shard
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._commit = contextlib.ExitStack()  # holds the open tar's atomic_path until it is finished
        self._count = 0
        self._bytes = 0
        self._closed = False

    def _name(self, shard: int) -> str:
        return f"{shard:05d}.tar"

    def _open_next(self) -> None:
        name = self._name(self.shard)
        if self._local_dir is not None:
            for leftover in self._local_dir.glob(f".{name}.tmp*"):  # a killed run's partial tar
                leftover.unlink(missing_ok=True)
        tmp = self._commit.enter_context(atomic_path(join(self.out_dir, name)))
        # stays open across write() calls; closed in _finish_current or __exit__
        self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = self._bytes = 0

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._commit.close()  # fsync and rename into place
        self.sizes[self._name(self.shard)] = self._count
        self._tar = None
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
        merged = (read_sizes(self.out_dir) or {}) if self.start_shard > 0 else {}
        merged.update(self.sizes)
        atomic_write(join(self.out_dir, SIZES_FILE), json.dumps(dict(sorted(merged.items())), indent=1))
        self._closed = True
        return self.sizes

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no temp file behind and no sizes.json claiming completeness
            self._tar.close()
            self._commit.__exit__(exc_type, exc, tb)  # removes the temporary tar
            self._tar = None


def _is_url(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    """Brace-expanded shard list (``::`` joins patterns); a local directory stands for the tars named in
    its ``sizes.json`` (else every ``*.tar`` in it)."""
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


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of a local path, an fsspec URL or a ``pipe:`` command."""
    if url.startswith("pipe:"):
        return gopen(url, "rb")
    if "://" in url:
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def read_sizes(directory: str) -> dict[str, int] | None:
    """``{tar name: n_samples}`` from the directory's ``sizes.json``; None when it has none."""
    try:
        with open_shard(f"{directory.rstrip('/')}/{SIZES_FILE}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


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
