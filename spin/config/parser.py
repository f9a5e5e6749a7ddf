"""SlowFast-style command line: ``--cfg FILE [KEY VALUE ...]``; defaults < file < command line."""
from __future__ import annotations

import argparse
import difflib
import os
import re
from typing import Optional, Sequence

import yaml
from yacs.config import CfgNode

from ..errors import SpinError
from .defaults import get_cfg


class ConfigError(SpinError, ValueError):
    """A bad config: the message says which key or file, what is wrong and how to fix it."""


# ConvMixer's plan keys in the published SPIN YAMLs, and in every config, checkpoint and identity spin
# wrote while each family had its own plan section; they mean the keys of WEIGHT_SHARE, the plan
# section of every family, and are renamed wherever a config or an identity is read.
PUBLISHED_PLAN = "CONVMIXER.WEIGHT_SHARE"


def plan_key(key: str) -> str:
    """``key`` as spin names it: CONVMIXER.WEIGHT_SHARE.X -> WEIGHT_SHARE.X (also an identity's
    'CONVMIXER.WEIGHT_SHARE scope'); every other key unchanged."""
    rest = key[len(PUBLISHED_PLAN):]
    return "WEIGHT_SHARE" + rest if key.startswith(PUBLISHED_PLAN) and rest[:1] in ("", ".", " ") else key


def _two_names(clash: dict, where: str) -> ConfigError:
    """``clash``: {WEIGHT_SHARE.X: (its value under the published name, under WEIGHT_SHARE)}."""
    given = "; ".join(f"CONVMIXER.{k} {a!r} and {k} {b!r}" for k, (a, b) in clash.items())
    return ConfigError(f"{given} in {where}: one key under its published and its current name, with different "
                       f"values; give it once, under WEIGHT_SHARE.* (the plan section of every family)")


def _same(a, b) -> bool:
    return CfgNode._decode_cfg_value(a) == CfgNode._decode_cfg_value(b)  # "None" is None, as yacs reads it


def plan_opts(opts: Sequence, where: str) -> list:
    """KEY VALUE pairs with the published plan keys renamed (:func:`plan_key`); a key given under
    both names with different values is a ConfigError."""
    out, published, current = list(opts), {}, {}
    for i in range(0, len(out) - 1, 2):
        key = plan_key(str(out[i]))
        (current if key == str(out[i]) else published)[key] = out[i + 1]  # the last value under each name
        out[i] = key
    clash = {k: (v, current[k]) for k, v in published.items() if k in current and not _same(v, current[k])}
    if clash:
        raise _two_names(clash, where)
    return out


def _plan_section(data: dict, where: str) -> dict:
    """A config mapping with its CONVMIXER.WEIGHT_SHARE keys moved into WEIGHT_SHARE. A config
    spin wrote before carries both sections whole, the one its family did not read at its
    defaults, so a key at its section's old default there yields to the other name; two values
    that both mean something are a ConfigError."""
    conv = data.get("CONVMIXER")
    if not isinstance(conv, dict) or "WEIGHT_SHARE" not in conv:
        return data
    conv = dict(conv)
    old, new = conv.pop("WEIGHT_SHARE"), data.get("WEIGHT_SHARE", {})
    data = {**data, "CONVMIXER": conv}
    if not (isinstance(old, dict) and isinstance(new, dict)):  # not a section: yacs names what is wrong
        data["WEIGHT_SHARE"] = new if isinstance(old, dict) else old
        return data
    defaults = get_cfg().WEIGHT_SHARE
    merged, clash = {**old, **new}, {}
    for k in old.keys() & new.keys():
        if _same(old[k], new[k]) or _same(old[k], "pointwise" if k == "SCOPE" else defaults.get(k)):
            continue  # agreed, or the old name at its old default (its SCOPE's was pointwise)
        if _same(new[k], defaults.get(k)):
            merged[k] = old[k]
        else:
            clash["WEIGHT_SHARE." + k] = (old[k], new[k])
    if clash:
        raise _two_names(clash, where)
    data["WEIGHT_SHARE"] = merged
    return data


def all_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out += all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"]
    return out


def _default(key: str):
    node = get_cfg()
    for part in key.split("."):
        node = node[part]
    return node


def _explain(err: Exception, where: str) -> ConfigError:
    msg = str(err.args[0]) if err.args else str(err)
    if msg.startswith(("Non-existent config key:", "Non-existent key:")):
        key = msg.split(":", 1)[1].strip()
        close = difflib.get_close_matches(key, all_keys(get_cfg()), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see spin/config/defaults.py"
        return ConfigError(f"unknown config key {key} in {where}{hint}")
    m = re.search(r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\).*for config key: (\S+)",
                  msg, re.S)
    if m:
        want, got, key = m.group(1).split(".")[-1], m.group(2).split(".")[-1], m.group(3)
        default = _default(key)
        if isinstance(default, CfgNode):
            return ConfigError(f"wrong value type in {where}: {key} is a section (its keys: "
                               f"{', '.join(list(default)[:4])}, ...), got a {got}; indent its keys under it")
        return ConfigError(f"wrong value type in {where}: {key} must be a {want} like its default "
                           f"{default!r}, got a {got}; give a value of the default's type")
    if "Type mismatch" in msg:
        return ConfigError(f"wrong value type in {where}: {msg.splitlines()[0]}; give a value of the "
                           f"default's type")
    return ConfigError(f"bad config in {where}: {msg.splitlines()[0] if msg else type(err).__name__}; "
                       f"keys are upper-case names, values YAML scalars or lists")


def _current(cfg: CfgNode, key: str):
    """The value ``key`` holds in ``cfg`` now, or its default where that is None (e.g.
    CLIP_GRAD_L2NORM), or None for an unknown key."""
    found = []
    for node in (cfg, get_cfg()):
        for part in key.split("."):
            node = node.get(part) if isinstance(node, CfgNode) else None
        found.append(node)
    return found[0] if found[0] is not None else found[1]


def _as_float(current, value):
    """1 for a float key is 1.0 (YAML and Python read '1' as an int; yacs would refuse it)."""
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _floats_in(cfg: CfgNode, data: dict, prefix: str = "") -> dict:
    return {k: _floats_in(cfg, v, f"{prefix}{k}.") if isinstance(v, dict) else
            _as_float(_current(cfg, f"{prefix}{k}"), v) for k, v in data.items()}


def _refuse_nulls(cfg: CfgNode, where: str, default: Optional[CfgNode] = None, prefix: str = "") -> None:
    """yacs takes a YAML null for any key; only keys whose default is None or text may be empty."""
    default = default if default is not None else get_cfg()
    for k, v in cfg.items():
        d = default.get(k)
        if isinstance(v, CfgNode) and isinstance(d, CfgNode):
            _refuse_nulls(v, where, d, f"{prefix}{k}.")
        elif v is None and d is not None and not isinstance(d, str):
            raise ConfigError(f"wrong value type in {where}: {prefix}{k} must be a {type(d).__name__} like its "
                              f"default {d!r}, got an empty value (null); give a value or drop the key")


def merge_file(cfg: CfgNode, path: str) -> None:
    """Merge a YAML file; any file that is not a mapping of known keys is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --cfg with a YAML file "
                          f"such as configs/WS-ConvMixer.yaml")
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f.read().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; pass a YAML config file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{at}: {problem}; fix the syntax "
                          f"(indentation, 'KEY: value' pairs)") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping of "
                          f"sections (TRAIN:, SOLVER:, ...); see configs/ for the layout")
    data = _plan_section(data, f"config file {path}")
    try:
        cfg.merge_from_other_cfg(CfgNode(_floats_in(cfg, data)))
    except (KeyError, ValueError, AssertionError, TypeError, AttributeError) as e:
        raise _explain(e, f"config file {path}") from None
    _refuse_nulls(cfg, f"config file {path}")


def merge_opts(cfg: CfgNode, opts: Sequence[str], where: str = "command-line overrides") -> None:
    if len(opts) % 2:
        raise ConfigError(f"{where} must be KEY VALUE pairs, got an odd list: {list(opts)}")
    opts = plan_opts(opts, where)
    for i in range(0, len(opts), 2):
        value = opts[i + 1]
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if _as_float(_current(cfg, str(opts[i])), value) is not value:
            opts[i + 1] = float(value)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise _explain(e, where) from None
    _refuse_nulls(cfg, where)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ConfigErrors (one ``spin: error:`` line, exit 2)."""

    def error(self, message):
        raise ConfigError(f"{message}; see {self.prog} --help")


def get_args_parser(prog: str = "spin train", description: str = "") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description or None)
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

    where = "the config stored in the checkpoint"
    walk(cfg, _plan_section(data or {}, where), "")
    merge_opts(cfg, pairs, where)
    return skipped
