"""Training sources: a corpus is a set of shards with a mixing weight; its size comes from ``sizes.json``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from viclip.atomic import join, local_path
from viclip.data.tars import SIZES_FILE, read_sizes
from viclip.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# A configured num_samples may differ from the shards' sizes.json by this share (a warning); more
# would change the run's step count and schedule, and is refused.
NUM_SAMPLES_TOLERANCE = 0.01
MIN_SAMPLE_BYTES = 512  # one tar header: a shard of n samples is at least n x 512 bytes


@dataclass
class Corpus:
    """One source of shards: a brace pattern (``dir/{00000..00099}.tar``, ``::`` joins several), a list
    of URLs, or a local directory holding tars and ``sizes.json``. Any fsspec URL works for tars.

    ``num_samples`` is the corpus size where its shards have no ``sizes.json``; where they have one,
    it is the size expected (the paper's) and is checked against the shards' count.
    """

    shards: str | list[str]
    weight: float = 1.0
    name: str | None = None
    num_samples: int | None = None


CorporaSpec = Corpus | str | os.PathLike | Sequence[Corpus | str | dict] | Mapping[str, dict]


def _corpus(item: Corpus | str | os.PathLike | Mapping) -> Corpus:
    if isinstance(item, Corpus):
        return item
    if not isinstance(item, Mapping):
        return Corpus(os.fspath(item))
    unknown = sorted(set(item) - {f.name for f in fields(Corpus)})
    if unknown:
        raise ConfigError(f"corpus {item.get('name', '')!r}: unknown fields {unknown}; a corpus has shards, weight, "
                          "num_samples")
    return Corpus(**item)


def as_corpora(spec: CorporaSpec) -> list[Corpus]:
    """Corpora from a Corpus, a shard pattern or directory, a list of those or of dicts, or a mapping
    ``{name: {shards, weight, num_samples}}`` (the ``data.sources`` group of the Hydra config)."""
    if isinstance(spec, (str, os.PathLike, Corpus)):
        spec = [spec]
    elif isinstance(spec, Mapping):
        spec = [{"name": name, **dict(entry)} for name, entry in spec.items()]
    corpora = [_corpus(c) for c in spec]
    if not corpora or any(c.weight <= 0 for c in corpora):
        raise ConfigError(f"data.sources: give at least one corpus, each with a weight > 0; got {spec!r:.300}")
    return corpora


def _shard_count(directory: str, name: str, sizes: dict[str, int]) -> int:
    """``sizes.json``'s count for one local tar, refused when the tar is too small to hold it."""
    n, path = sizes[name], local_path(join(directory, name))
    if path is not None and path.is_file() and path.stat().st_size < n * MIN_SAMPLE_BYTES:
        raise DataError(f"{join(directory, SIZES_FILE)}: {name} has {n} samples, but {path} is "
                        f"{path.stat().st_size} bytes (a sample takes at least {MIN_SAMPLE_BYTES})")
    return n


def corpus_num_samples(corpus: Corpus, shards: list[str]) -> int:
    """Samples in a corpus: the ``sizes.json`` entries of its shards, else the configured ``num_samples``.

    A configured count more than :data:`NUM_SAMPLES_TOLERANCE` away from the shards' raises
    ConfigError (the step count would follow the wrong figure); a smaller difference is logged.
    """
    label = corpus.name or corpus.shards
    by_dir: dict[str, list[str]] = {}
    for shard in shards:
        directory, name = shard.rsplit("/", 1) if "/" in shard else (".", shard)
        by_dir.setdefault(directory, []).append(name)
    total, missing = 0, []
    for directory, names in by_dir.items():
        sizes = read_sizes(directory) or {}
        missing += [join(directory, n) for n in names if n not in sizes]
        total += sum(_shard_count(directory, n, sizes) for n in names if n in sizes)
    configured = corpus.num_samples
    if missing:
        absent = [m for m in missing if "://" not in m and not os.path.exists(m)]
        if configured is None and absent:
            raise FileNotFoundError(f"corpus {label!r}: {absent[0]} does not exist (shards: a directory of tars "
                                    "with sizes.json, a tar, or a brace pattern of tars)")
        if configured is None:
            raise DataError(f"corpus {label!r}: no size for {missing[:3]} in its {SIZES_FILE}; write one "
                            "(tools/make_shards.py does) or set the corpus's num_samples")
        return configured
    if configured is not None and configured != total:
        where = f"data.sources.{corpus.name}.num_samples" if corpus.name else "num_samples"
        message = (f"corpus {label!r}: its shards' {SIZES_FILE} count {total} samples but {where}={configured}")
        if abs(configured - total) > NUM_SAMPLES_TOLERANCE * total:
            raise ConfigError(f"{message}; set {where}=null to train on the shards' count")
        log.warning("%s; training on the shards' count", message)
    return total
