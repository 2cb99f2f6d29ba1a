"""Webdataset tars: the writer used by curation and the synthetic generator, shard lists and member reading.

A shard is a plain tar of ``{key}.mp4``, ``{key}.txt`` (caption) and ``{key}.json`` (every metadata
field plus the caption). Keys are dot-free (``{shard:05d}{index:06d}``) because webdataset splits a
member name at its first dot. ``sizes.json`` (``{tar name: n_samples}``), written last, marks a
shard set complete and lets the training stream compute a fixed epoch length without reading any tar.

Every reader of tar members (the training stream, embed-clips, curation) splits a member name with
:func:`member_key` and reads a member with :func:`read_member` or :func:`iter_tar_samples`, so a tar
reads the same everywhere and no member can claim more memory than ``max_member_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import fsspec
from typing_extensions import Self

from viclip.atomic import atomic_path, atomic_write, join, local_path
from viclip.errors import ConfigError, DataError

SIZES_FILE = "sizes.json"
# What one member may claim before it is read: a clip is a few MB; a GNU sparse member can claim a
# terabyte in a few header bytes, and reading it would fill memory with zeros.
MAX_MEMBER_BYTES = 1 << 30


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
            raise ConfigError(f"ShardWriter needs max_samples >= 1 and max_bytes >= 1, got max_samples={max_samples}, "
                              f"max_bytes={max_bytes}")
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
    """Brace-expanded shard list (``::`` joins patterns and directories); a local directory stands for the tars named in
    its ``sizes.json`` (else every ``*.tar`` in it)."""
    items = [os.fspath(urls)] if isinstance(urls, (str, os.PathLike)) else [os.fspath(u) for u in urls]
    shards: list[str] = []
    for item in (part for joined in items for part in joined.split("::")):
        if not _is_url(item) and os.path.isdir(item):
            sizes = read_sizes(item)
            names = sorted(sizes) if sizes is not None else sorted(p.name for p in Path(item).glob("*.tar"))
            shards += [os.path.join(item, n) for n in names]
        else:
            from webdataset.shardlists import expand_urls  # webdataset imports torch: only when a list is read

            shards += expand_urls(item)
    if not shards:
        raise DataError(f"no shards found for {urls!r}: give a directory of tars or a brace pattern of tar files")
    return shards


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of a local path, an fsspec URL or a ``pipe:`` command."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if "://" in url:
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def read_sizes(directory: str | os.PathLike) -> dict[str, int] | None:
    """``{tar name: n_samples}`` from the directory's ``sizes.json``; None when it has none. A file
    that is not such a mapping of counts raises DataError naming it and the bad entry."""
    path = join(directory, SIZES_FILE)
    try:
        with open_shard(path) as f:
            raw = f.read()
    except (FileNotFoundError, OSError):
        return None
    try:
        sizes = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(sizes, dict):
        raise DataError(f"{path}: expected {{tar name: sample count}}, got a JSON {type(sizes).__name__}")
    for name, n in sizes.items():
        if type(n) is not int or n < 0:
            raise DataError(f"{path}: {name!r} has {n!r} samples; a sample count is an integer >= 0")
    return sizes


def member_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name, or None for a name without one: the key is the path
    up to the first dot of the base name (webdataset's rule), the extension the rest, lower-cased. A
    leading ``./`` or ``/`` (``tar -C dir -cf x.tar .``) is dropped, so ``./k.mp4`` is ``k``'s mp4."""
    directory, _, base = posixpath.normpath(name).lstrip("/").rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key or not ext:
        return None
    return (f"{directory}/{key}" if directory else key), ext.lower()


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo | str, where: str,
                max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """A member's bytes from an opened tar (random access). DataError, naming ``where`` (the tar) and
    the member, for a missing member, one that is not a file, or one claiming more than ``max_bytes``
    (checked before reading: a sparse member's claim costs nothing to write and all of memory to read)."""
    try:
        info = tar.getmember(member) if isinstance(member, str) else member
    except KeyError:
        raise DataError(f"{where}: no member {member}") from None
    if info.size > max_bytes:
        raise DataError(f"{where}: member {info.name} claims {info.size} bytes, more than max_member_bytes={max_bytes}")
    f = tar.extractfile(info) if info.isfile() else None
    if f is None:
        raise DataError(f"{where}: member {info.name} is not a file")
    return f.read()


def iter_tar_samples(fileobj: IO[bytes], max_member_bytes: int = MAX_MEMBER_BYTES
                     ) -> Iterator[dict[str, bytes | str]]:
    """Group consecutive tar members by :func:`member_key` into ``{"__key__": key, ext: bytes, ...}``.

    Reads the tar as a stream, so it works on pipes and network files; a truncated or corrupt tar
    raises ``tarfile.ReadError`` after yielding the samples before the damage. A member claiming more
    than ``max_member_bytes`` is not read: its sample gets ``"__oversized__"`` (the member and its
    claim) instead, for the reader to skip.
    """
    current: dict[str, bytes | str] | None = None
    # reads of 1 MiB, not tarfile's 10 KiB records: a 1 MB clip then costs a few reads, not a hundred
    with tarfile.open(fileobj=fileobj, mode="r|*", bufsize=1 << 20) as tar:
        for member in tar:
            split = member_key(member.name) if member.isfile() else None
            if split is None:
                continue
            key, ext = split
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            if member.size > max_member_bytes:
                current["__oversized__"] = f"{member.name} claims {member.size} bytes > {max_member_bytes}"
            else:
                current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


def stable_hash64(text: str) -> int:
    """A signed int64 from blake2b, the same in every process and run (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)
