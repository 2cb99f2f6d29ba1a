"""Ray as a curation engine (``--engine ray``): each shard a Ray task, or a call on an actor holding a model.

CPU stages (split-scenes, fetch-clips) run each shard as a task asking for the job's ``cpus``
(``--workers``: the shard's supervised video workers, :mod:`viclip.curation.pool`, fork inside the
task, so a hanging or crashing video is still a failed row and never a failed task). Model stages
(caption-clips, score-clips, embed-clips) start ``actors`` actors, each building the model once on
``gpus_per_worker`` GPUs, and hand them shards as they free up. A task or actor whose process or
node dies is retried by Ray (:data:`RETRIES` times); the retry redoes only its shard, whose leftovers
the stage removes, and shards already marked done stay done. The driver writes nothing: the workers
write every file, so the output directory must be one path all nodes see (a shared file system or
an object store URL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from viclip.curation.engine import ShardJob
from viclip.errors import ConfigError

RETRIES = 3  # Ray reruns a task or restarts an actor this often after its process or node died


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--engine ray needs Ray: pip install 'viclip[cluster]'") from e
    return ray


def _run_shard(make_runner: Callable, shard: int, data: Any) -> dict:
    """A CPU shard as a Ray task: a fresh (cheap) runner, the shard, its report."""
    return make_runner()(shard, data, lambda n: None)


class _ModelWorker:
    """An actor: builds the job's runner (its model) once, then does shard after shard."""

    def __init__(self, make_runner: Callable) -> None:
        self.runner = make_runner()

    def run(self, shard: int, data: Any) -> dict:
        return self.runner(shard, data, lambda n: None)


class RayEngine:
    """Run a job on the Ray cluster at ``address`` (default: ``RAY_ADDRESS``, else a local Ray started here).

    ``actors`` model actors (default: as many as the cluster's GPUs hold at ``gpus_per_worker`` each,
    one without GPUs); ``init`` goes to ``ray.init`` when this engine starts Ray.
    """

    def __init__(self, address: str | None = None, gpus_per_worker: float = 1.0, actors: int | None = None,
                 **init: Any) -> None:
        if gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
        if actors is not None and actors < 1:
            raise ConfigError(f"--actors must be >= 1, got {actors}")
        self.address, self.gpus, self.actors, self.init = address, gpus_per_worker, actors, init

    def _actor_count(self, ray: Any, shards: int) -> int:
        if self.actors is not None:
            return min(self.actors, shards)
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.gpus > 0 and gpus < self.gpus:
            raise ConfigError(f"--gpus-per-worker {self.gpus}: the Ray cluster has {gpus:g} GPUs "
                              "(use --gpus-per-worker 0 to run the models on CPUs)")
        return max(1, min(int(gpus // self.gpus) if self.gpus > 0 else 1, shards))

    @staticmethod
    def _room(ray: Any, job: ShardJob) -> float:
        """Shards in flight at most: twice what the cluster runs at once now (it may grow), so the driver
        holds a bounded number of futures and inputs; actors take one shard each anyway."""
        return math.inf if job.model else max(2 * ray.cluster_resources().get("CPU", 1) // job.cpus, 2)

    def run(self, job: ShardJob, advance: Callable[[int, int], None]) -> Iterator[tuple[int, dict]]:
        if not job.inputs:
            return
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, **self.init)
        pending: dict[Any, tuple[int, Any]] = {}  # future -> (shard, actor or None)
        try:
            if job.model:
                cls = ray.remote(num_cpus=1, num_gpus=self.gpus, max_restarts=RETRIES,
                                 max_task_retries=RETRIES)(_ModelWorker)
                idle = [cls.remote(job.make_runner) for _ in range(self._actor_count(ray, len(job.inputs)))]
            else:  # one copy of the runner in the object store for all tasks
                task, runner = ray.remote(num_cpus=job.cpus, max_retries=RETRIES)(_run_shard), ray.put(job.make_runner)
            todo = iter(job.inputs.items())
            while True:
                room = self._room(ray, job)
                while len(pending) < room and (not job.model or idle):
                    if (item := next(todo, None)) is None:
                        break
                    shard, data = item
                    actor = idle.pop() if job.model else None
                    future = actor.run.remote(shard, data) if job.model else task.remote(runner, shard, data)
                    pending[future] = (shard, actor)
                if not pending:
                    return
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                shard, actor = pending.pop(ready)
                report = ray.get(ready)
                if actor is not None:
                    idle.append(actor)
                yield shard, report
        finally:
            for future in pending:  # the driver stopped early (an error, Ctrl-C): stop what still runs
                ray.cancel(future, force=not job.model)
            if started:
                ray.shutdown()
