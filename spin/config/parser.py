"""SlowFast-style command line: ``--cfg FILE [KEY VALUE ...]``; defaults < file < command line."""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Optional, Sequence

from yacs.config import CfgNode

from .defaults import get_cfg


class ConfigError(ValueError):
    """A bad config: the message says which key or file, what is wrong and how to fix it."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out += _all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"]
    return out


def _explain(err: Exception, where: str) -> ConfigError:
    msg = str(err.args[0]) if err.args else str(err)
    if msg.startswith(("Non-existent config key:", "Non-existent key:")):
        key = msg.split(":", 1)[1].strip()
        close = difflib.get_close_matches(key, _all_keys(get_cfg()), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see spin/config/defaults.py"
        return ConfigError(f"unknown config key {key} in {where}{hint}")
    if "Type mismatch" in msg:
        return ConfigError(f"wrong value type in {where}: {msg}; give a value of the default's type")
    return ConfigError(f"bad config in {where}: {msg}")


def merge_file(cfg: CfgNode, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --cfg with a YAML file "
                          f"such as configs/WS-ConvMixer.yaml")
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise _explain(e, f"config file {path}") from None


def merge_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs, got an odd list: "
                          f"{list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise _explain(e, "command-line overrides") from None


def get_args_parser(description: str = "spin: parameter sharing for isotropic networks"):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cfg", dest="cfg_files", action="append", default=None,
                   help="YAML config file (may repeat; merged in order)")
    p.add_argument("--init_method", default="tcp://localhost:9999",
                   help="torch.distributed init method, e.g. tcp://HOST:PORT (ignored under torchrun)")
    p.add_argument("--shard_id", type=int, default=0, help="this machine's index (multi-node)")
    p.add_argument("--num_shards", type=int, default=1, help="number of machines")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                   help="KEY VALUE overrides, e.g. NUM_GPUS 4 TRAIN.BATCH_SIZE 256")
    return p


def load_config(cfg_files: Optional[Sequence[str]] = None, opts: Sequence[str] = (),
                num_shards: Optional[int] = None, shard_id: Optional[int] = None) -> CfgNode:
    """Defaults, then each file, then KEY VALUE overrides."""
    cfg = get_cfg()
    for f in cfg_files or []:
        merge_file(cfg, f)
    merge_opts(cfg, opts or [])
    if num_shards is not None and num_shards != 1:
        cfg.NUM_SHARDS = num_shards
    if shard_id is not None and shard_id != 0:
        cfg.SHARD_ID = shard_id
    for key in ("TRAIN.CHECKPOINT_FILE_PATH", "TEST.CHECKPOINT_FILE_PATH", "DATA.PATH_TO_DATA_DIR"):
        sec, name = key.split(".")
        if cfg[sec][name] is None:  # `KEY:` with no value in YAML reads as null
            cfg[sec][name] = ""
    return cfg


def cfg_from_args(args: argparse.Namespace) -> CfgNode:
    return load_config(args.cfg_files, args.opts, args.num_shards, args.shard_id)


def merge_known(cfg: CfgNode, data: dict) -> list[str]:
    """Merge a nested dict (e.g. a checkpoint's stored config, which may come from SlowFast with
    many keys spin does not have) taking only the keys spin knows; returns the skipped keys."""
    pairs, skipped = [], []

    def walk(node: CfgNode, d: dict, prefix: str):
        for k, v in d.items():
            if k not in node:
                skipped.append(prefix + k)
            elif isinstance(node[k], CfgNode):
                if isinstance(v, dict):
                    walk(node[k], v, f"{prefix}{k}.")
            else:
                pairs.extend([prefix + k, v])

    walk(cfg, data or {}, "")
    merge_opts(cfg, pairs)
    return skipped
