"""Atomic file writes: a reader, or a rerun after a kill, sees a whole file or none, never part of one.

Every writer of the package goes through :func:`atomic_path` (for writers that need a path: parquet,
torch.save, tar) or :func:`atomic_write` (bytes or text). ``path`` is a local path or any fsspec URL.

- **Local** (a plain path or ``file://``): the file is written under a hidden temporary name in the
  same directory, ``.{name}.tmp{pid}-{n}``, then renamed over ``path``; a failed write removes it,
  and a killed one leaves only a name that stage reruns recognise and delete.
- **Elsewhere** (``s3://``, ``gs://``, ``memory://``...): object stores have no rename, but they
  publish an object only when its upload completes. The file is written to a local temporary file
  and uploaded to ``path`` in one ``put_file``; a kill before the upload ends leaves nothing under
  ``path``. Writers that mark work done (a stage's stats file, ``sizes.json``) write the marker last,
  so a marker only ever names finished files.

Durability policy: with ``durable=True`` (the default) a local file is fsynced before the rename and
the directory after it, so a finished file also survives a machine crash (checkpoints, weights,
shards, stage outputs, results). ``durable=False`` skips both syncs, for files that are cheap to redo
(caches, a metrics log rewritten on resume); an object store's own guarantee applies to uploads. This
module imports nothing else of the package, so every layer (``viclip.model`` included) may use it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

_counter = itertools.count()


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a local path or URL and the path within it; a protocol that is unknown
    or whose package is missing is a ValueError naming the URL (the tools print it as one line)."""
    try:
        return fsspec.core.url_to_fs(os.fspath(url))
    except (ImportError, ValueError) as e:
        raise ValueError(f"{os.fspath(url)}: {e}") from e


def local_path(path: str | os.PathLike) -> Path | None:
    """``path`` as a local path (plain or ``file://``), or None for any other fsspec URL."""
    path = os.fspath(path)
    if "://" not in path:
        return Path(path)
    fs, inner = filesystem(path)
    return Path(inner) if isinstance(fs, LocalFileSystem) else None


def join(base: str | os.PathLike, name: str) -> str:
    """``base/name`` for a local path or a URL (``Path`` would turn ``s3://b`` into ``s3:/b``)."""
    return f"{os.fspath(base).rstrip('/')}/{name}"


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden name beside the local ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{next(_counter)}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put(local: str | os.PathLike, url: str) -> None:
    """Upload a finished local file to ``url`` in one put: the object appears whole when it completes."""
    fs, inner = filesystem(url)
    parent = inner.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)  # a no-op on object stores, needed on memory:// and the like
    fs.put_file(os.fspath(local), inner)


@contextlib.contextmanager
def _upload_on_success(url: str) -> Iterator[Path]:
    """A local temporary file, uploaded to ``url`` when the body succeeds, always removed."""
    inner = filesystem(url)[1]
    fd, name = tempfile.mkstemp(prefix=".viclip-upload-", suffix=f"-{os.path.basename(inner)}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _put(tmp, url)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a local temporary path to write; on success it becomes ``path`` (local or URL), on error it is removed."""
    local = local_path(path)
    if local is None:
        with _upload_on_success(os.fspath(path)) as tmp:
            yield tmp
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(local)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, local)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(local.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> str | Path:
    """Write ``data`` (text as UTF-8) to ``path`` (local or URL) atomically; returns ``path``."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return os.fspath(path) if "://" in os.fspath(path) else Path(path)


def atomic_rename(src: str | os.PathLike, dst: str | os.PathLike, durable: bool = True) -> None:
    """Move a finished local file (or directory) into place under the same durability policy.

    To a URL that is not local the file is uploaded as :func:`atomic_path` does, then ``src`` removed
    (files only: a directory has no atomic upload).
    """
    target = local_path(dst)
    if target is None:
        if os.path.isdir(src):
            raise IsADirectoryError(f"cannot publish directory {src} to {dst} atomically: object stores have no "
                                    "rename; upload its files one by one")
        _put(src, os.fspath(dst))
        os.remove(src)
        return
    os.replace(src, target)
    if durable:
        _fsync_dir(target.parent)
