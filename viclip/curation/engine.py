"""The one seam between a curation stage and what runs it: a shard job, and the engines that run one.

A stage describes its work as a :class:`ShardJob`: the shards to do, each one's input, and a
``make_runner`` that builds (models and all) a runner doing one shard from start to done mark. The
stage never knows who runs it. :class:`LocalEngine` runs the shards one after another in this
process (a SLURM array task runs its slice of the shards this way); ``viclip.curation.engine_ray``
runs each shard as a Ray task, or on actors that keep one model each. Shards are independent and
end with an atomic done mark, so an engine may run them in any order, anywhere, and rerun any that
died; a run may switch engines between reruns. A new engine is one new module and a line in
:data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from viclip.errors import ConfigError

# advance(n): n more units (videos, clips) of the shard are done, for the progress display
Advance = Callable[[int], None]
# runner(shard, its input, advance) -> what the shard reports (its counts), once its done mark is written
ShardRunner = Callable[[int, Any, Advance], dict]

ENGINES = {"local": "viclip.curation.engine:LocalEngine", "ray": "viclip.curation.engine_ray:RayEngine"}


@dataclass
class ShardJob:
    """A stage's pending shards and how to do one.

    ``make_runner`` must pickle (a module-level class or a closure over plain data) for an engine
    that ships it to other processes. ``model`` says the runner holds a model: an engine builds it
    once per worker (a Ray actor on ``gpus`` GPUs) and feeds it shard after shard; otherwise a
    runner is cheap and a shard's task asks for ``cpus`` cores.
    """

    make_runner: Callable[[], ShardRunner]
    inputs: dict[int, Any]            # shard -> its input (None when the runner reads it from disk)
    unit: str = "video"               # what ``advance`` counts
    model: bool = False
    cpus: float = 1.0
    sizes: dict[int, int] = field(default_factory=dict)  # shard -> units, for the progress total


class Engine(Protocol):
    """Runs a job's shards; yields ``(shard, report)`` as each finishes, in any order."""

    def run(self, job: ShardJob, advance: Callable[[int, int], None]) -> Iterator[tuple[int, dict]]: ...


class LocalEngine:
    """This process, one shard after another; the runner is built before the first shard."""

    def run(self, job: ShardJob, advance: Callable[[int, int], None]) -> Iterator[tuple[int, dict]]:
        runner = job.make_runner() if job.inputs else None
        for shard, data in job.inputs.items():
            yield shard, runner(shard, data, lambda n, s=shard: advance(s, n))


def make_engine(name: str = "local", **options: Any) -> Engine:
    """The engine called ``name`` (``--engine``), built with its ``options``; Ray is imported only when asked."""
    if name not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
