"""On-disk cache of embedding matrices, keyed by everything that determines them.

The key hashes the checkpoint content, the model-side options (wise-ft), the protocol (frames,
sampling, resolution, resize antialiasing, caption cleaning) and the inputs: the texts, or each video's
path with its file identity (size and modification time, :func:`file_identity`), so a changed
annotation file, option, checkpoint or video file is never served stale embeddings. A video that failed
to decode is not a final answer: its row is retried on every hit (the runner's ``Evaluator.videos``). An
entry holding a non-finite value is treated as corrupt and recomputed. Entries are written atomically
but not fsynced (``durable=False``): a cache entry lost in a crash is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from viclip.atomic import atomic_path


def cache_key(**parts) -> str:
    """A stable hex key of JSON-serialisable ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def file_identity(paths: Sequence[str]) -> list[tuple[str, int, int] | tuple[str, None, None]]:
    """``(path, size, mtime_ns)`` per file, ``(path, None, None)`` for one that is absent: a file added,
    replaced or rewritten in place changes its identity and so the cache key."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, None, None))
        else:
            out.append((path, st.st_size, st.st_mtime_ns))
    return out


class EmbeddingCache:
    """``{root}/{kind}-{key}.pt`` files holding a dict of tensors; ``root=None`` disables caching."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root else None

    def path(self, kind: str, key: str) -> Path | None:
        return self.root / f"{kind}-{key}.pt" if self.root else None

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry, or None when it is absent, unreadable or holds a NaN or infinity (recomputed)."""
        path = self.path(kind, key)
        if path is None or not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, never fatal
            return None
        if not isinstance(entry, dict) or not all(isinstance(t, torch.Tensor) for t in entry.values()):
            return None
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in entry.values()):
            return None
        return entry

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path(kind, key)
        if path is None:
            return
        with atomic_path(path, durable=False) as tmp:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
