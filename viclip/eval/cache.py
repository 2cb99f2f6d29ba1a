"""On-disk cache of embedding matrices, keyed by everything that determines them.

The key hashes the checkpoint content, the model-side options (wise-ft), the protocol (frames,
sampling, resolution, caption cleaning) and the exact list of inputs (video paths or texts), so a
changed annotation file, option or checkpoint can never be served stale embeddings. Entries are
written atomically but not fsynced (``durable=False``): a cache entry lost in a crash is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from viclip.atomic import atomic_path


def cache_key(**parts) -> str:
    """A stable hex key of JSON-serialisable ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class EmbeddingCache:
    """``{root}/{kind}-{key}.pt`` files holding a dict of tensors; ``root=None`` disables caching."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root else None

    def path(self, kind: str, key: str) -> Path | None:
        return self.root / f"{kind}-{key}.pt" if self.root else None

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(kind, key)
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, never fatal
            return None

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path(kind, key)
        if path is None:
            return
        with atomic_path(path, durable=False) as tmp:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
