"""``spin <command>``: train | test (and the tools added alongside). Thin: parse, then call the
package. Every user error ends in one ``spin: error: ...`` line and exit status 2."""
from __future__ import annotations

import os
import shutil
import sys
from typing import Callable, Sequence

import torch

from .config import ConfigError, cfg_from_args, get_args_parser
from .data import DataError
from .engine.checkpoint import CheckpointError
from .engine.distributed import DistInfo, cleanup, init_distributed, pick_device, under_torchrun
from .engine.engine import NonFiniteLossError
from .sharing import SharingError

USER_ERRORS = (ConfigError, SharingError, CheckpointError, DataError, NonFiniteLossError)


# --------------------------------------------------------------------------- process launch
def _spawned(local_rank: int, cfg, init_method: str, job: Callable):
    info = init_distributed(cfg.NUM_GPUS, cfg.DIST_BACKEND, init_method,
                            rank=cfg.SHARD_ID * cfg.NUM_GPUS + local_rank,
                            world_size=cfg.NUM_SHARDS * cfg.NUM_GPUS, local_rank=local_rank,
                            local_world_size=cfg.NUM_GPUS)
    try:
        job(cfg, info)
    finally:
        cleanup()


def launch(cfg, init_method: str, job: Callable):
    """Under torchrun: join its group. With NUM_GPUS > 1 GPUs and no torchrun: spawn one process
    per GPU (SlowFast style, --init_method/--shard_id/--num_shards). Otherwise one process."""
    if under_torchrun():
        info = init_distributed(cfg.NUM_GPUS, cfg.DIST_BACKEND)
        try:
            return job(cfg, info)
        finally:
            cleanup()
    if cfg.NUM_GPUS > 1 and torch.cuda.is_available():
        if torch.cuda.device_count() < cfg.NUM_GPUS:
            raise ConfigError(f"NUM_GPUS is {cfg.NUM_GPUS} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); set NUM_GPUS accordingly")
        torch.multiprocessing.spawn(_spawned, nprocs=cfg.NUM_GPUS, args=(cfg, init_method, job))
        return None
    if cfg.NUM_SHARDS > 1:
        raise ConfigError("NUM_SHARDS > 1 needs one process per GPU on each machine: launch with "
                          "torchrun (see README, multi-node)")
    return job(cfg, DistInfo(device=pick_device(cfg.NUM_GPUS, 0)))


# --------------------------------------------------------------------------- jobs
def _print_summary(res: dict, cfg) -> None:
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
    from .engine.trainer import test, train

    res = None
    if cfg.TRAIN.ENABLE:
        res = train(cfg, info)
        if info.is_master:
            _print_summary(res, cfg)
    if cfg.TEST.ENABLE:
        test(cfg, info)
    return res


def test_job(cfg, info: DistInfo):
    from .engine.trainer import test

    return test(cfg, info)


def train_main(argv: Sequence[str]):
    """spin train --cfg FILE [KEY VALUE ...] (= tools/run_net.py): trains if TRAIN.ENABLE, then
    tests if TEST.ENABLE."""
    args = get_args_parser("spin train").parse_args(argv)
    return launch(cfg_from_args(args), args.init_method, run_net_job)


def test_main(argv: Sequence[str]):
    """spin test --cfg FILE TEST.CHECKPOINT_FILE_PATH ck.pyth: top-1/top-5 and loss."""
    args = get_args_parser("spin test").parse_args(argv)
    return launch(cfg_from_args(args), args.init_method, test_job)


def launch_main(argv: Sequence[str]):
    """What run.sh calls: with NUM_GPUS > 1 and CUDA, re-run ``spin train`` under torchrun with
    one process per GPU (and NUM_SHARDS nodes); else train in this process."""
    args = get_args_parser("spin launch").parse_args(argv)
    cfg = cfg_from_args(args)
    if cfg.NUM_GPUS > 1 and torch.cuda.is_available() and not under_torchrun():
        torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
        host_port = args.init_method.split("://", 1)[-1]
        host, _, port = host_port.rpartition(":")
        cmd = [torchrun, f"--nproc_per_node={cfg.NUM_GPUS}", f"--nnodes={cfg.NUM_SHARDS}",
               f"--node_rank={cfg.SHARD_ID}", f"--master_addr={host or 'localhost'}",
               f"--master_port={port or 29500}", "-m", "spin.cli", "train", *argv]
        print("launching:", " ".join(cmd), flush=True)
        os.execv(cmd[0], cmd)
    return launch(cfg, args.init_method, run_net_job)


COMMANDS = {"train": train_main, "test": test_main, "launch": launch_main}


def main(argv: Sequence[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: spin {" + "|".join(c for c in COMMANDS if c != "launch") + "} [--cfg FILE] [KEY VALUE ...]")
        for name, fn in COMMANDS.items():
            if name != "launch":
                print(f"  {name:8s} {fn.__doc__.strip().splitlines()[0]}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except USER_ERRORS as e:
        print(f"spin: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
