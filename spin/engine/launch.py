"""Process launch: under torchrun join its group; with NUM_GPUS > 1 and no torchrun spawn one
process per GPU (SlowFast style); else one process. And the jobs ``spin train`` / ``spin test``
run in each process."""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch

from ..config import ConfigError
from ..errors import SpinError
from .distributed import DistInfo, cleanup, init_distributed, pick_device, under_torchrun
from .verify import ConsistencyError


def _spawned(local_rank: int, cfg, init_method: str, job: Callable):
    info = init_distributed(cfg.NUM_GPUS, cfg.DIST_BACKEND, init_method,
                            rank=cfg.SHARD_ID * cfg.NUM_GPUS + local_rank,
                            world_size=cfg.NUM_SHARDS * cfg.NUM_GPUS, local_rank=local_rank,
                            local_world_size=cfg.NUM_GPUS)
    finished = False
    try:
        job(cfg, info)
        finished = True
    except SpinError as e:  # said once, by rank 0; the parent then reports that a process stopped
        if local_rank == 0:
            print(f"spin: error: {str(e).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(1 if isinstance(e, ConsistencyError) else 2)
    finally:
        cleanup(finished)


class LaunchError(SpinError, RuntimeError):
    """A spawned training process stopped with an error (reported by that process)."""


def launch(cfg, init_method: str, job: Callable):
    """Under torchrun: join its group. With NUM_GPUS > 1 GPUs and no torchrun: spawn one process
    per GPU (SlowFast style, --init_method/--shard_id/--num_shards). Otherwise one process."""
    if under_torchrun():
        info = init_distributed(cfg.NUM_GPUS, cfg.DIST_BACKEND)
        finished = False
        try:
            out = job(cfg, info)
            finished = True
            return out
        finally:
            cleanup(finished)
    if cfg.NUM_GPUS > 1 and torch.cuda.is_available():
        if torch.cuda.device_count() < cfg.NUM_GPUS:
            raise ConfigError(f"NUM_GPUS is {cfg.NUM_GPUS} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); set NUM_GPUS accordingly")
        try:
            torch.multiprocessing.spawn(_spawned, nprocs=cfg.NUM_GPUS, args=(cfg, init_method, job))
        except torch.multiprocessing.ProcessExitedException as e:
            if e.exit_code == 1:  # a run whose number its checkpoint did not reproduce (verify.py)
                raise ConsistencyError(f"training process {e.error_index} of {cfg.NUM_GPUS}: the run's own "
                                       f"evaluation differs from its saved checkpoint's (its error is above)") from None
            raise LaunchError(f"training process {e.error_index} of {cfg.NUM_GPUS} stopped (exit {e.exit_code}); "
                              f"its error is above") from None
        return None
    if cfg.NUM_SHARDS > 1:
        raise ConfigError("NUM_SHARDS > 1 needs one process per GPU on each machine: launch with "
                          "torchrun (see README, multi-node)")
    if cfg.NUM_GPUS > 0 and not torch.cuda.is_available():
        print(f"spin: NUM_GPUS is {cfg.NUM_GPUS} but CUDA is not available: running one process on "
              f"the CPU with the whole TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE}", file=sys.stderr)
    return job(cfg, DistInfo(device=pick_device(cfg.NUM_GPUS, 0)))


def _print_summary(res: dict) -> None:
    val = res.get("val") or {}
    if val:
        print(f"val top-1 {100 - val['top1_err']:.2f}%  top-5 {100 - val['top5_err']:.2f}%  "
              f"loss {val['loss']:.4f}")
    print(f"parameters {res['parameters']:,} (unique after fusion {res['unique_parameters']:,})")
    print(f"checkpoints  {os.path.join(res['output_dir'], 'checkpoints')} (last: {res['checkpoint']})")
    print(f"logs         {os.path.join(res['output_dir'], 'stdout.log')}, metrics.csv beside the checkpoints")
    if res.get("tensorboard"):
        print(f"tensorboard  tensorboard --logdir {res['tensorboard']}")


def run_net_job(cfg, info: DistInfo):
    from .trainer import test, train

    res = None
    if cfg.TRAIN.ENABLE:
        res = train(cfg, info)
        if info.is_master:
            _print_summary(res)
    if cfg.TEST.ENABLE:
        test(cfg, info)
    return res


def test_job(cfg, info: DistInfo):
    from .trainer import test

    return test(cfg, info)


