"""Webdataset shards: the writer used by curation and the synthetic generator, and the training stream.

A shard is a plain tar of ``{key}.mp4``, ``{key}.txt`` (caption) and ``{key}.json`` (every metadata
field plus the caption). Keys are dot-free (``{shard:05d}{index:06d}``) because webdataset splits a
member name at its first dot. ``sizes.json`` (``{tar name: n_samples}``), written last, marks a
shard set complete and lets the stream compute a fixed epoch length without reading any tar.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from typing_extensions import Self

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
            raise ValueError(f"ShardWriter needs max_samples >= 1 and max_bytes >= 1, got {max_samples}, {max_bytes}")
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
