"""Process groups: torchrun (env://) or SlowFast-style spawning (--init_method, --shard_id).

TRAIN.BATCH_SIZE is per machine and split over the processes on that machine (SlowFast meaning).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def pick_device(num_gpus: int, local_rank: int) -> torch.device:
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(num_gpus: int, backend: str = "nccl", init_method: str = "env://",
                     rank: int = -1, world_size: int = -1, local_rank: int = 0,
                     local_world_size: int = 1) -> DistInfo:
    """Join the process group when there is more than one process. Under torchrun everything comes
    from the environment; a spawned process passes its rank explicitly."""
    if under_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        init_method = "env://"
    elif world_size < 0:
        return DistInfo(device=pick_device(num_gpus, 0))
    device = pick_device(num_gpus, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend if device.type == "cuda" else "gloo",
                                init_method=init_method, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, local_world_size, device)


def cleanup(finished: bool = False):
    """Leave the group; after a finished job, together: a rank that tears its gloo threads down
    while another still talks to it can abort the process (CI saw a SIGABRT at exit once). A
    failed rank leaves at once, so the others stop instead of waiting for it."""
    if dist.is_available() and dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers on every rank. An EMA copy blends each rank's own BatchNorm statistics
    (DDP re-broadcasts the live model's at each forward, not the EMA's): without this, the EMA
    evaluated over all ranks would not be the EMA that rank 0 saves."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, 0)


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
