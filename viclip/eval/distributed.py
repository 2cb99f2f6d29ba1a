"""Splitting an evaluation set across ranks and gathering the rows back, each item exactly once.

Rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...``. The split is a pure function of the
dataset length, so every rank knows every other rank's count: the gather pads to the largest count
for the collective and drops the padding, and no item is duplicated to even out the shards (the
DistributedSampler habit that double-counts a few videos in the metrics).
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group when launched by torchrun/srun (``WORLD_SIZE`` > 1); gloo on the CPU,
    nccl on CUDA. Returns True when distributed. Idempotent: a Hydra sweep calls it once per job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
        atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    # barrier first: a rank that tears gloo down while another still sends can abort the job
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if world()[1] > 1:
        dist.barrier()
