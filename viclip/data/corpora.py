"""Training sources: a corpus is a set of shards with a mixing weight; its size comes from ``sizes.json``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from viclip.data.tars import SIZES_FILE, read_sizes


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
        sizes = read_sizes(directory)
        missing = [n for n in names if sizes is None or n not in sizes]
        if missing:
            raise ValueError(f"corpus {corpus.name or corpus.shards!r}: no size for {missing[:3]} in "
                             f"{directory}/{SIZES_FILE}; set num_samples for shards without sizes.json")
        total += sum(sizes[n] for n in names)
    return total
