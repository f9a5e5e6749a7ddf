"""``spin <command>``: train | test | fuse | stats | predict | export | plot | sweep | analyze |
bench | compress (and ``launch``, the multi-node entry). Thin: parse, then call the package. Every user
error (any :class:`~spin.errors.SpinError`) ends in ``spin: error: ...`` lines, one per problem,
and exit status 2, before anything is written."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

import torch

from .config import ArgumentParser, ConfigError, cfg_from_args, check_cfg, get_args_parser, load_config, plan_opts
from .engine.checkpoint import cfg_from_checkpoint, latest_checkpoint
from .engine.distributed import under_torchrun
from .engine.launch import launch, run_net_job, test_job
from .engine.verify import ConsistencyError
from .errors import SpinError
from .paths import check_file, check_folder
from .sweep.run import SweepStopped


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


# --------------------------------------------------------------------------- jobs
class Interrupted(Exception):
    """Ctrl-C: the message says what a rerun does."""


def _run_training(cfg, init_method: str):
    try:
        return launch(cfg, init_method, run_net_job)
    except KeyboardInterrupt:  # checkpoints are written atomically: the newest one is whole
        ck = latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
        raise Interrupted(f"interrupted; rerun the same command to resume from {ck}" if ck else
                          "interrupted before any checkpoint to resume from (or with TRAIN.AUTO_RESUME False): "
                          "a rerun starts over") from None


def train_main(argv: Sequence[str]):
    """spin train --cfg FILE [KEY VALUE ...] (= tools/run_net.py): trains if TRAIN.ENABLE, then
    tests if TEST.ENABLE."""
    args = parse(get_args_parser("spin train", train_main.__doc__), argv)
    cfg = cfg_from_args(args)
    check_cfg(cfg, "train")
    return _run_training(cfg, args.init_method)


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
    return _run_training(cfg, args.init_method)


def fuse_main(argv: Sequence[str]):
    """spin fuse --cfg WFWS.yaml TRAIN.CHECKPOINT_FILE_PATH ck.pyth: export a fused WS checkpoint."""
    from .tools.fuse import default_output, fuse_checkpoint, human_bytes

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
    print(f"it stores its WS config (WEIGHT_SHARE.REDUCTION_FN None): spin test "
          f"TEST.CHECKPOINT_FILE_PATH {out['output']}")
    return out


def stats_main(argv: Sequence[str]):
    """spin stats [--cfg FILE]... [--checkpoint CK]... [--markdown]: parameters, MACs, the README row."""
    from .config import load_config, merge_opts
    from .engine.checkpoint import build_model_from_checkpoint
    from .tools.fuse import human_bytes
    from .tools.stats import describe, format_table

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
    from .tools.predict import predict

    p = ArgumentParser(prog="spin predict", description=predict_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="a spin checkpoint with a stored cfg, or an exported "
                                                       ".onnx / .pt2 (config in its metadata)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides of the stored cfg")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    failed: list = []
    results = predict(args.checkpoint, args.images, args.opts, args.topk, failures=failed)
    for path, top in results:
        print(path)
        for rank, (name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<20s} {100 * prob:6.2f}%")
    if failed:  # the good images' results are out; the exit status still says some failed
        from .data import DataError

        raise DataError("\n".join(why for _, why in failed))
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
    for run in args.runs:
        if not os.path.isdir(run):
            raise ConfigError(f"{run!r} is not a run folder; give the OUTPUT_DIR of spin train")
    out = args.out or (os.path.join(args.runs[0], "curves.png") if len(args.runs) == 1 else "curves.png")
    check_file(out, "--out" if args.out else "the default output (choose one with --out)", suffix=".png")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise ConfigError(f"--labels has {len(labels)} entries for {len(args.runs)} runs; give one per run")
    shown = plot_runs(args.runs, out, labels)
    print(f"{out}: {', '.join(shown)}")
    return out


def sweep_main(argv: Sequence[str]):
    """spin sweep --cfg BASE.yaml --grid KEY V1,V2 [--seeds 3] --out DIR | --sweep FILE --out DIR | --report DIR"""
    from .sweep import (TrialsFailed, changed_error, changed_trials, check_not_reserved, check_trials, finalize,
                        grid_trials, load_sweep_file, parse_values, run_sweep, save_comparisons, slurm_submission,
                        write_report)

    p = ArgumentParser(prog="spin sweep", description=sweep_main.__doc__)
    p.add_argument("--cfg", action="append", default=[], help="base config (may repeat)")
    p.add_argument("--grid", nargs=2, action="append", default=[], metavar=("KEY", "V1,V2,..."),
                   help="one grid axis (may repeat: cartesian product); a YAML list for list values")
    p.add_argument("--sweep", default="", help="a sweep YAML file with named groups of trials")
    p.add_argument("--seeds", type=int, default=None, help="seeds per grid point (RNG_SEED 0..N-1; default 1)")
    p.add_argument("--out", default="", help="the sweep folder: one run folder per trial, results, plots")
    p.add_argument("--jobs", type=int, default=1, help="local executor: trials at once (CPU threads are split)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    slurm_defaults = {"partition": "", "gpus": 1, "cpus": 10, "time": 24 * 60, "array_parallelism": 64}
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per trial (one task each: DDP; default 1)")
    p.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per task (default 10)")
    p.add_argument("--slurm-time", type=int, default=None, help="time limit per trial, minutes (default 1440)")
    p.add_argument("--slurm-array-parallelism", type=int, default=None, help="(default 64)")
    p.add_argument("--dry-run", action="store_true", help="list the trials (and the SLURM submission); run nothing")
    p.add_argument("--report", default="", metavar="DIR", help="rebuild DIR's tables and plots from its run folders")
    p.add_argument("--rerun-changed", action="store_true",
                   help="retrain in place the trials whose folders hold results of other settings (their "
                        "old outputs are removed); without it such a sweep is refused")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every trial")
    args = parse(p, argv)
    slurm_given = {k: getattr(args, "slurm_" + k) for k in slurm_defaults if getattr(args, "slurm_" + k) is not None}
    if args.report:
        others = [flag for flag, given in (("--cfg", args.cfg), ("--grid", args.grid), ("--sweep", args.sweep),
                                           ("--out", args.out), ("--seeds", args.seeds is not None),
                                           ("--dry-run", args.dry_run), ("--slurm-*", slurm_given),
                                           ("--rerun-changed", args.rerun_changed),
                                           ("KEY VALUE overrides", args.opts)) if given]
        if others:
            raise ConfigError(f"--report DIR only rebuilds DIR's tables and plots; drop {', '.join(others)}")
        if not os.path.isdir(args.report):
            raise ConfigError(f"--report {args.report!r} is not a folder; give the --out folder of a sweep")
        check_folder(args.report, "--report")
        res = write_report(args.report)
        print(f"{len(res['rows'])} trials: {args.report}/results.csv, summary.md"
              + (", comparisons.csv" if res["comparisons"] else "") + f", {len(res['plots'])} plots")
        return res
    if not args.out:
        raise ConfigError("spin sweep needs --out DIR (the sweep folder), or --report DIR")
    check_folder(args.out, "--out")
    if bool(args.sweep) == bool(args.grid):
        raise ConfigError("give either --sweep FILE or --cfg BASE.yaml with --grid KEY V1,V2 (not both)")
    if slurm_given and args.executor != "slurm":
        raise ConfigError(f"--slurm-{', --slurm-'.join(k.replace('_', '-') for k in slurm_given)} given with the "
                          f"local executor; add --executor slurm, or drop them")
    slurm = {**slurm_defaults, **slurm_given}
    for name, value, low in (("--jobs", args.jobs, 1), ("--seeds", 1 if args.seeds is None else args.seeds, 1),
                             ("--slurm-gpus", slurm["gpus"], 0), ("--slurm-cpus", slurm["cpus"], 1),
                             ("--slurm-time", slurm["time"], 1),
                             ("--slurm-array-parallelism", slurm["array_parallelism"], 1)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if len(args.opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd list: {args.opts}")
    check_not_reserved(args.opts, "the command line's overrides")
    keys = [key for key, _ in args.grid]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--grid {', '.join(twice)} given more than once; list all its values in one --grid")
    comparisons = None  # a grid from the command line has none: it leaves DIR's alone
    if args.sweep:
        settings, trials = load_sweep_file(args.sweep)
        comparisons = settings["comparisons"]
        if args.cfg or args.seeds is not None:
            raise ConfigError("--cfg and --seeds come from the sweep file with --sweep; edit the file")
        for t in trials:  # the command line's overrides come after the file's
            t.opts = t.opts + plan_opts(args.opts, "the command line's overrides")
    else:
        if not args.cfg:
            raise ConfigError("spin sweep --grid needs --cfg BASE.yaml")
        grid = {key: parse_values(values) for key, values in args.grid}
        trials = grid_trials("grid", args.cfg, list(args.opts), grid, args.seeds or 1)
    if args.executor == "slurm":  # a trial's processes are its SLURM tasks, one per GPU
        for t in trials:
            t.opts = t.opts + ["NUM_GPUS", str(slurm["gpus"])]
    trials = finalize(trials, args.out)
    check_trials(trials)
    changed = changed_trials(trials)
    if changed and not (args.rerun_changed or args.dry_run):
        raise changed_error(changed, args.out)
    if args.dry_run:
        for t in trials:
            print(f"{t.key}: {' '.join(t.run_opts)}" + (f"  (after {t.parent_key})" if t.parent else "")
                  + (f"  (changed: {changed[t.key]})" if t.key in changed else ""))
        if args.executor == "slurm":
            first = [t for t in trials if not t.parent]
            print(f"# the first SLURM submission: {len(first)} trials without a parent, as one job array")
            print(slurm_submission(os.path.join(os.path.abspath(args.out), ".submitit"), slurm, len(first)))
        return trials
    if comparisons is not None:  # before the trials run: a report of a stopped sweep judges them too
        save_comparisons(args.out, comparisons)
    status = run_sweep(trials, args.out, args.executor, args.jobs, slurm, rerun=changed)
    res = write_report(args.out)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"sweep: {sum(v == 'done' for v in status.values())}/{len(trials)} trials done"
          + (f", {len(failed)} failed: {', '.join(failed)}" if failed else "")
          + f"; {args.out}/summary.md, results.csv" + (", comparisons.csv" if res["comparisons"] else "")
          + f", {len(res['plots'])} plots")
    if failed:
        raise TrialsFailed(f"{len(failed)} of {len(trials)} trials failed: {', '.join(failed[:4])}"
                           f"{f' (+{len(failed) - 4} more)' if len(failed) > 4 else ''}; their errors are in "
                           f"{os.path.join(args.out, 'results.csv')}; rerun the same command to retry them")
    return status


def compress_main(argv: Sequence[str]):
    """spin compress --checkpoint VANILLA.pyth [--out DIR] [--share-rate R] [KEY VALUE ...]: WFWS + distillation, fuse, export."""
    from .tools.compress import compress

    p = ArgumentParser(prog="spin compress", description=compress_main.__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="the trained vanilla model: a spin .pyth (its stored config), or a .pth/.safetensors with --cfg")
    p.add_argument("--cfg", action="append", default=[], help="the teacher's config (for a file without a stored one)")
    p.add_argument("--out", default="", help="folder for every step's output (default: <checkpoint>-compressed)")
    p.add_argument("--share-rate", type=int, default=None, help="layers per shared set (default 2)")
    p.add_argument("--num-sets", type=int, default=0, help="sets per stack instead of a rate (1: MiniViT's one per stage)")
    p.add_argument("--suggest", type=int, default=0, metavar="N",
                   help="the plan with N sets that spin analyze suggests from the teacher's weights")
    p.add_argument("--fusion", default="mean", help="how the WFWS sets start (default mean)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tune epochs (default: the teacher's SOLVER.MAX_EPOCH)")
    p.add_argument("--no-distill", action="store_true", help="fine-tune on the labels only")
    p.add_argument("--export", default="", choices=["", "pt2", "onnx"], help="also export the fused model")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (plan, DISTILL, SOLVER keys: the student's)")
    args = parse(p, argv)
    if args.suggest and (args.num_sets or args.share_rate is not None):
        raise ConfigError("--suggest picks the plan itself; drop --share-rate / --num-sets (or --suggest)")
    if args.num_sets and args.share_rate is not None:
        raise ConfigError("--num-sets and --share-rate both set the sets of each stack; give one of them")
    out = args.out or os.path.splitext(os.path.abspath(args.checkpoint))[0] + "-compressed"
    res = compress(args.checkpoint, out, args.cfg, args.opts, share_rate=args.share_rate or 2, num_sets=args.num_sets,
                   fusion=args.fusion, suggest=args.suggest, epochs=args.epochs, distill=not args.no_distill,
                   export=args.export)
    from .tools.compress import markdown

    print("\n" + markdown(res) + f"\n{out}: train/, fused.pyth, fused.safetensors"
          f"{', export/' if res['export'] else ''}, compress.json, compress.md")
    return res


def export_main(argv: Sequence[str]):
    """spin export --checkpoint CK --format onnx|pt2 [--out FILE]: a verified deployable artifact."""
    from .tools.export import FORMATS, export_checkpoint
    from .tools.fuse import human_bytes

    p = ArgumentParser(prog="spin export", description=export_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (WFWS is fused first)")
    p.add_argument("--cfg", action="append", default=[], help="the config, for a file without a stored one")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", default="", help="the artifact (default: the checkpoint's name with .onnx / .pt2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (verified at 1 and 5)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the stored config")
    args = parse(p, argv)
    cfg = load_config(args.cfg, args.opts) if args.cfg else None
    res = export_checkpoint(args.checkpoint, args.format, args.out, cfg, args.opts, args.opset,
                            args.dynamic_batch, args.overwrite)
    print(f"{res['output']}: {res['format']}, {human_bytes(res['file_bytes'])} (weights "
          f"{human_bytes(res['stored_bytes'])} in {res['stored_tensors']} tensors)")
    print(f"parameters {res['params']:,}, unique {res['unique_params']:,} ({human_bytes(res['unique_bytes'])} fp32); "
          f"max |logit difference| vs PyTorch {res['max_abs_diff']:.2e} (logits up to {res['logit_scale']:.3g}) "
          f"at batch {res['batches']}")
    return res


def analyze_main(argv: Sequence[str]):
    """spin analyze --checkpoint CK [--images N] [--out DIR] [--suggest N]: layer similarity, plans."""
    from .tools.analyze import analyze
    from .data import build_dataset, build_loader
    from .engine.checkpoint import build_model_from_checkpoint
    from .models.factory import family_of, model_depth

    p = ArgumentParser(prog="spin analyze", description=analyze_main.__doc__)
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (its stored cfg builds the model)")
    p.add_argument("--cfg", action="append", default=[], help="the config, for a file without a stored one")
    p.add_argument("--images", type=int, default=512, help="validation images for CKA (>= 4)")
    p.add_argument("--out", default="", help="folder for cka.png, weights.png, analysis.json "
                                             "(default: OUTPUT_DIR/analysis beside the checkpoints)")
    p.add_argument("--suggest", type=int, default=None, metavar="N", help="suggest plans with N sets")
    p.add_argument("--by", choices=["weights", "cka"], default=None,
                   help="the similarity --suggest groups by (default: the in-scope weights)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parse(p, argv)
    if args.images < 4:
        raise ConfigError(f"--images must be >= 4 (the unbiased CKA estimator needs 4 per batch), got {args.images}")
    if args.suggest is not None and args.suggest < 1:
        raise ConfigError(f"--suggest must be a number of sets >= 1, got {args.suggest}")
    if args.by and args.suggest is None:
        raise ConfigError("--by chooses what --suggest groups by; add --suggest N (or drop --by)")
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    out = args.out or (os.path.join(os.path.dirname(folder), "analysis") if os.path.basename(folder) == "checkpoints"
                       else os.path.splitext(os.path.abspath(args.checkpoint))[0] + "-analysis")
    check_folder(out, "--out" if args.out else "the default output folder (choose one with --out)")
    cfg = load_config(args.cfg, args.opts) if args.cfg else None
    model, cfg, _ = build_model_from_checkpoint(args.checkpoint, args.opts, cfg)
    if family_of(cfg).stacks:
        raise ConfigError(f"spin analyze compares the layers of one block stack, but MODEL.MODEL_NAME "
                          f"{cfg.MODEL.MODEL_NAME} has one per stage, of different widths; analyze an isotropic model")
    depth = model_depth(cfg)
    if args.suggest is not None and args.suggest > depth:
        raise ConfigError(f"--suggest {args.suggest}: a plan has at most one set per layer; give 1 <= N <= "
                          f"the depth {depth}")
    val = build_dataset(cfg, "val")
    loader = build_loader(cfg, val, False, max(4, min(cfg.TEST.BATCH_SIZE, args.images)))
    res = analyze(model, loader, args.images, out, args.suggest or 0, args.by or "weights")
    print(f"{out}: cka.png, weights.png, analysis.json ({res['images']} images, {len(res['cka'])} layers)")
    for cand in res.get("suggestions", []):
        print(f"\n{cand['name']}: layer map {cand['layer_map']}, mean within-group {res['suggested_by']} similarity "
              f"{cand['mean_within_similarity']:.4f}, relative fusion error {cand['fusion_error']:.4f}")
        if "best" in cand["name"]:
            print(cand["yaml"].rstrip())
    return res


def bench_main(argv: Sequence[str]):
    """spin bench [--preset imagenet,cifar] [--device cuda --amp bf16]: throughput vs timm."""
    from .tools.bench import main as bench

    return bench(list(argv))


COMMANDS = {"train": train_main, "test": test_main, "fuse": fuse_main, "stats": stats_main,
            "predict": predict_main, "export": export_main, "plot": plot_main, "sweep": sweep_main,
            "analyze": analyze_main, "bench": bench_main, "compress": compress_main, "launch": launch_main}


def main(argv: Sequence[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = [c for c in COMMANDS if c != "launch"]
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        report(ConfigError(f"unknown command {argv[0]!r}; commands: {', '.join(shown)} (spin --help)"))
        return 2
    if not argv:
        report(ConfigError(f"no command given; commands: {', '.join(shown)} (spin --help)"))
        return 2
    if argv[0] in ("-h", "--help"):
        print("usage: spin {" + "|".join(shown) + "} [--cfg FILE] [KEY VALUE ...]")
        for name in shown:
            print(f"  {name:8s} {COMMANDS[name].__doc__.strip().splitlines()[0]}")
        return 0
    try:
        COMMANDS[argv[0]](argv[1:])
    except SweepStopped as e:  # Ctrl-C during a sweep: said what stopped and how to resume
        print(f"spin: {e}", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"spin: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # every file is written atomically: nothing half-written is kept
        print("spin: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except ConsistencyError as e:  # not a bad input: a number spin would have got wrong
        report(e)
        return 1
    except SpinError as e:
        report(e)
        return getattr(e, "exit_status", 2)  # 2: bad input; a finished sweep with failed trials says 1
    except OSError as e:  # the paths are checked before the work; this is what no check foresaw
        if e.errno is None:
            raise
        where = f" {e.filename!r}" if e.filename else " a file or folder (the OS did not say which)"
        report(ConfigError(f"cannot use{where}: {e.strerror}; check the path, its permissions and free space"))
        return 2
    return 0


def report(err: Exception) -> None:
    """One ``spin: error:`` line per problem; indented lines continue the problem above."""
    for line in str(err).splitlines() or [type(err).__name__]:
        print(line if line.startswith(" ") else f"spin: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
