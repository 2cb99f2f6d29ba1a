"""Atomic file writes: a reader, or a rerun after a kill, sees a whole file or none, never part of one.

Every writer of the package goes through :func:`atomic_path` (for writers that need a path: parquet,
torch.save, tar) or :func:`atomic_write` (bytes or text). The file is written under a hidden
temporary name in the same directory, ``.{name}.tmp{pid}-{n}``, then renamed over ``path``; a
failed write removes it, and a killed one leaves only a name that stage reruns recognise and delete.

Durability policy: with ``durable=True`` (the default) the data is fsynced before the rename and the
directory after it, so a finished file also survives a machine crash (checkpoints, weights, shards,
stage outputs, results). ``durable=False`` skips both syncs, for files that are cheap to redo
(caches, a metrics log rewritten on resume). This module imports nothing else of the package, so
every layer (``viclip.model`` included) may use it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

_counter = itertools.count()


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden name beside ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{next(_counter)}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_rename(src: str | os.PathLike, dst: str | os.PathLike, durable: bool = True) -> None:
    """Move a finished file (or directory) into place under the same durability policy."""
    os.replace(src, dst)
    if durable:
        _fsync_dir(Path(dst).parent)
