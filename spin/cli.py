"""``spin <command>``: train | test | fuse | stats | predict | bench. Thin: parse, then call the
package. Every user error (any :class:`~spin.errors.SpinError`) ends in ``spin: error: ...``
lines, one per problem, and exit status 2, before anything is written."""
from __future__ import annotations

import os
import shutil
import sys
from typing import Callable, Sequence

import torch

from .config import ArgumentParser, ConfigError, cfg_from_args, check_cfg, get_args_parser
from .engine.checkpoint import cfg_from_checkpoint
from .engine.distributed import DistInfo, cleanup, init_distributed, pick_device, under_torchrun
from .errors import SpinError


def parse(parser, argv: Sequence[str]):
    """parse_args that also accepts ``--flags`` after the KEY VALUE pairs (argparse's REMAINDER
    would swallow them); config keys never start with '--'."""
    flags, rest, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        action = parser._option_string_actions.get(argv[i].split("=", 1)[0]) if argv[i].startswith("--") else None
        if action is None and argv[i].startswith("--"):
            raise ConfigError(f"unknown option {argv[i]}; see {parser.prog} --help (config keys are "
                              f"given as KEY VALUE, without dashes)")
        if action is None:
            rest.append(argv[i])
            i += 1
            continue
        takes = 0 if action.nargs == 0 or "=" in argv[i] else (action.nargs if isinstance(action.nargs, int) else 1)
        flags += argv[i:i + 1 + takes]
        i += 1 + takes
    return parser.parse_args(flags + rest)


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
    if cfg.NUM_GPUS > 0 and not torch.cuda.is_available():
        print(f"spin: NUM_GPUS is {cfg.NUM_GPUS} but CUDA is not available: running one process on "
              f"the CPU with the whole TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE}", file=sys.stderr)
    return job(cfg, DistInfo(device=pick_device(cfg.NUM_GPUS, 0)))


# --------------------------------------------------------------------------- jobs
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
    from .engine.trainer import test, train

    res = None
    if cfg.TRAIN.ENABLE:
        res = train(cfg, info)
        if info.is_master:
            _print_summary(res)
    if cfg.TEST.ENABLE:
        test(cfg, info)
    return res


def test_job(cfg, info: DistInfo):
    from .engine.trainer import test

    return test(cfg, info)


def train_main(argv: Sequence[str]):
    """spin train --cfg FILE [KEY VALUE ...] (= tools/run_net.py): trains if TRAIN.ENABLE, then
    tests if TEST.ENABLE."""
    args = parse(get_args_parser("spin train", train_main.__doc__), argv)
    cfg = cfg_from_args(args)
    check_cfg(cfg, "train")
    return launch(cfg, args.init_method, run_net_job)


def test_main(argv: Sequence[str]):
    """spin test --cfg FILE TEST.CHECKPOINT_FILE_PATH ck.pyth: top-1/top-5 and loss."""
    args = parse(get_args_parser("spin test", test_main.__doc__), argv)
    cfg = cfg_from_args(args)
    if not args.cfg_files and cfg.TEST.CHECKPOINT_FILE_PATH:
        cfg = cfg_from_checkpoint(cfg.TEST.CHECKPOINT_FILE_PATH, args.opts)
    check_cfg(cfg, "test")
    return launch(cfg, args.init_method, test_job)


def launch_main(argv: Sequence[str]):
    """What run.sh calls: with NUM_GPUS > 1 and CUDA, re-run ``spin train`` under torchrun with
    one process per GPU (and NUM_SHARDS nodes); else train in this process."""
    args = parse(get_args_parser("spin launch", launch_main.__doc__), argv)
    cfg = cfg_from_args(args)
    check_cfg(cfg, "train")
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


def fuse_main(argv: Sequence[str]):
    """spin fuse --cfg WFWS.yaml TRAIN.CHECKPOINT_FILE_PATH ck.pyth: export a fused WS checkpoint."""
    from .export import default_output, fuse_checkpoint, human_bytes

    p = get_args_parser("spin fuse", fuse_main.__doc__)
    p.add_argument("--output", default="", help="output .pyth (default OUTPUT_DIR/<name>-fused.pyth)")
    p.add_argument("--safetensors", action="store_true", help="also write <output>.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parse(p, argv)
    cfg = cfg_from_args(args)
    ck = cfg.TRAIN.CHECKPOINT_FILE_PATH
    if not ck:
        raise ConfigError("spin fuse needs TRAIN.CHECKPOINT_FILE_PATH: the WFWS checkpoint to export")
    out = fuse_checkpoint(cfg, ck, args.output or default_output(ck, cfg.OUTPUT_DIR),
                          safetensors=args.safetensors, overwrite=args.overwrite)
    print(f"before  {ck}: {out['params_before']:,} parameters, {human_bytes(out['file_bytes_before'])}")
    print(f"after   {out['output']}: {out['params_after']:,} parameters, "
          f"{human_bytes(out['file_bytes_after'])} (tensors {human_bytes(out['state_bytes_after'])})")
    if out["safetensors"]:
        print(f"        {out['safetensors']}: {human_bytes(out['safetensors_bytes'])}")
    print("reload it with the WS config (REDUCTION_FN None), e.g. spin test --cfg "
          "configs/WS-ConvMixer.yaml TEST.CHECKPOINT_FILE_PATH " + out["output"])
    return out


def stats_main(argv: Sequence[str]):
    """spin stats [--cfg FILE]... [--checkpoint CK]... [--markdown]: parameters, MACs, the README row."""
    import argparse

    from .config import load_config, merge_opts
    from .engine.checkpoint import build_model_from_checkpoint
    from .export import human_bytes
    from .stats import describe, format_table

    p = ArgumentParser(prog="spin stats", description=stats_main.__doc__)
    p.add_argument("--cfg", action="append", default=[], help="a config: one row each")
    p.add_argument("--checkpoint", action="append", default=[], help="a .pyth: one row each")
    p.add_argument("--sweep", nargs=2, action="append", default=[], metavar=("KEY", "V1,V2,..."),
                   help="one row per value (an ablation table); may repeat (cross product)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every row")
    args = parse(p, argv)
    bases = [(os.path.basename(f), load_config([f], args.opts)) for f in args.cfg]
    files = {}
    for ck_path in args.checkpoint:
        _, cfg, _ = build_model_from_checkpoint(ck_path, args.opts)  # also checks the weights fit
        bases.append((os.path.basename(ck_path), cfg))
        files[os.path.basename(ck_path)] = human_bytes(os.path.getsize(ck_path))
    if not bases:
        bases = [("defaults" if not args.opts else "overrides", load_config(None, args.opts))]
    rows_cfgs = bases
    for key, values in args.sweep:
        expanded = []
        for name, cfg in rows_cfgs:
            for v in values.split(","):
                c = cfg.clone()
                merge_opts(c, [key, v])
                expanded.append((f"{name} {key.split('.')[-1]}={v}".strip(), c))
        rows_cfgs = expanded
    rows = []
    for name, cfg in rows_cfgs:
        row = describe(cfg, name)
        if name in files:
            row["file"] = files[name]
        rows.append(row)
    print(format_table(rows, args.markdown))
    return rows


def predict_main(argv: Sequence[str]):
    """spin predict --checkpoint ck.pyth IMAGE...: top-5 classes per image."""
    import argparse

    from .predict import predict

    p = ArgumentParser(prog="spin predict", description=predict_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="a .pyth with a stored cfg (any spin checkpoint)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides of the stored cfg")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    results = predict(args.checkpoint, args.images, args.opts, args.topk)
    for path, top in results:
        print(path)
        for rank, (name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<20s} {100 * prob:6.2f}%")
    return results


def plot_main(argv: Sequence[str]):
    """spin plot RUN_DIR [RUN_DIR ...] [--out FILE.png]: training curves of runs, one colour each."""
    from .engine.curves import plot_runs

    p = ArgumentParser(prog="spin plot", description=plot_main.__doc__)
    p.add_argument("runs", nargs="+", help="run folders (OUTPUT_DIR of spin train)")
    p.add_argument("--out", default="", help="PNG to write (default: RUN_DIR/curves.png for one run, "
                                             "curves.png here for several)")
    p.add_argument("--labels", default="", help="comma list of legend labels (default: folder names)")
    args = p.parse_args(argv)
    if args.out and not args.out.lower().endswith(".png"):
        raise ConfigError(f"--out {args.out!r} must name a .png file")
    out = args.out or (os.path.join(args.runs[0], "curves.png") if len(args.runs) == 1 else "curves.png")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise ConfigError(f"--labels has {len(labels)} entries for {len(args.runs)} runs; give one per run")
    shown = plot_runs(args.runs, out, labels)
    print(f"{out}: {', '.join(shown)}")
    return out


def bench_main(argv: Sequence[str]):
    """spin bench [--preset imagenet,cifar] [--device cuda --amp bf16]: throughput vs timm."""
    from .bench import main as bench

    return bench(list(argv))


COMMANDS = {"train": train_main, "test": test_main, "fuse": fuse_main, "stats": stats_main,
            "predict": predict_main, "plot": plot_main, "bench": bench_main, "launch": launch_main}


def main(argv: Sequence[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = [c for c in COMMANDS if c != "launch"]
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        report(ConfigError(f"unknown command {argv[0]!r}; commands: {', '.join(shown)} (spin --help)"))
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: spin {" + "|".join(shown) + "} [--cfg FILE] [KEY VALUE ...]")
        for name in shown:
            print(f"  {name:8s} {COMMANDS[name].__doc__.strip().splitlines()[0]}")
        return 0 if argv else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except SpinError as e:
        report(e)
        return 2
    return 0


def report(err: Exception) -> None:
    """One ``spin: error:`` line per problem; indented lines continue the problem above."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(line if line.startswith(" ") else f"spin: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
