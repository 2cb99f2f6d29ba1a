"""Process-group set-up for torchrun, srun and a bare single process, and the CPU DeepSpeed fixes.

DeepSpeed reads the launcher's variables; when a process starts without them (``python train.py``)
it looks for MPI, so the single-process defaults are written here. On the CPU, DeepSpeed compiles a
shared-memory collective op at every start (15-80 s); it is marked unavailable so plain gloo
collectives are used and nothing compiles.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")


def init_distributed() -> DistInfo:
    """Initialise the process group through DeepSpeed (NCCL on GPUs, gloo on the CPU)."""
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
    from deepspeed.utils import groups

    groups._WORLD_GROUP = None
