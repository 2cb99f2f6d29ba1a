"""Rank, world size and barrier helpers, the launcher set-up (torchrun, srun, a bare process) and shutdown.

One leaf module for training and evaluation: it imports nothing else of the package. DeepSpeed reads
the launcher's variables; when a process starts without them (``python train.py``) it looks for MPI,
so :func:`launcher_env` writes the single-process defaults. Under srun it fills them from SLURM's
variables, including ``MASTER_ADDR`` (the one place it is computed; the slurm scripts rely on it). On
the CPU, DeepSpeed compiles a shared-memory collective op at every start (15-80 s); it is marked
unavailable so plain gloo collectives are used and nothing compiles.

Evaluation splits a set across ranks: rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...``, a pure
function of the length, so :func:`gather_rows` pads to the largest count and drops the padding; no
item is duplicated to even out the shards (the DistributedSampler habit that double-counts videos).
"""

from __future__ import annotations

import atexit
import datetime
import functools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if world()[1] > 1:
        dist.barrier()


def _slurm_master_addr() -> str:
    """First host of the job's node list (``scontrol`` expands ranges like ``gpu[01-08]``)."""
    nodes = os.environ["SLURM_JOB_NODELIST"]
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError) as e:
        raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodes!r} with scontrol: set MASTER_ADDR") from e


def launcher_env() -> None:
    """Fill RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from torchrun, srun, or single-process defaults."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env["RANK"] = env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        # one port per job, so two jobs sharing a node do not collide
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    if "RANK" not in env:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        # port 0: the store binds a free port itself (no other rank has to find it); a port picked here and
        # bound later could be taken in between by another job on the machine
        env.setdefault("MASTER_PORT", "0")
    env.setdefault("LOCAL_RANK", "0")


def init_distributed() -> DistInfo:
    """Training: initialise the process group through DeepSpeed (NCCL on GPUs, gloo on the CPU), always."""
    launcher_env()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR: DeepSpeed picks its accelerator at first use

    if not cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device)


def init_from_env(device: torch.device) -> bool:
    """Evaluation: join the process group only when launched by torchrun (``WORLD_SIZE`` > 1); gloo on the
    CPU, nccl on CUDA; torn down at exit. Returns True when distributed. Idempotent: a Hydra sweep calls
    it once per job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
        atexit.register(shutdown)
    return True


def set_cpu_threads(num_workers: int) -> int:
    """Share the cores between this node's ranks and their decoding workers, unless OMP_NUM_THREADS says.

    With more compute threads than free cores, OpenMP barriers wait on descheduled threads: on a
    2-core machine a rank with 2 threads beside a decoding worker ran its step 10-20x slower than
    with 1 thread.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (local_world * (1 + num_workers))))
    return torch.get_num_threads()


def shutdown(clean: bool = True) -> None:
    """Tear the process group down; ``clean`` waits for every rank first (ending a gloo group while a
    peer still talks can abort the peer), which a failing run must not do (a peer may be stuck).

    DeepSpeed caches a clone of the world group; it is dropped too, so that a second run in this
    process (a local Hydra multirun) builds its groups afresh.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
    if "deepspeed" in sys.modules:
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The items of ``rank``: a strided slice, so long and short videos spread evenly over ranks."""
    return list(range(rank, n, world_size))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble ``[n, ...]`` in dataset order from each rank's ``local`` rows (its
    :func:`shard_indices`). Without a process group it returns ``local`` (which must then have n rows)."""
    if local.dtype == torch.bool:  # not every backend gathers bool tensors
        return gather_rows(local.to(torch.uint8), n).bool()
    rank, world_size = world()
    if local.shape[0] != len(shard_indices(n, rank, world_size)):
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, its shard of {n} has "
                         f"{len(shard_indices(n, rank, world_size))}")
    if world_size == 1:
        return local
    max_rows = -(-n // world_size)
    padded = local.new_zeros((max_rows, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in enumerate(parts):
        count = len(shard_indices(n, r, world_size))
        out[r::world_size] = part[:count]
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (identity without a process group)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def pick_device(name: str) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU; ``cuda``: this rank's GPU (``LOCAL_RANK``, so
    torchrun's ranks do not share one); any other name as given."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def fit_workers(wanted: int, cuda: bool) -> int:
    """Decoding workers per rank: ``wanted``, on a machine without a GPU at most this rank's share of the
    cores (more workers than cores only queue for them, each holding its buffers). Training's and
    evaluation's loaders ask here."""
    if cuda:
        return wanted
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if wanted > share:
        _say_capped(wanted, share)
    return min(wanted, share)


@functools.cache
def _say_capped(wanted: int, share: int) -> None:  # once a process: training asks for its threads and loader
    log.info("%d loader workers on %d CPU core(s) per rank without a GPU: using %d", wanted, share, share)
