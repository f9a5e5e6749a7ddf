"""Config: SlowFast-schema defaults, the ``--cfg FILE KEY VALUE`` parser and the one value check."""
from .check import check_cfg
from .defaults import CHOICES, FAMILY_SECTIONS, MODEL_FAMILIES, get_cfg
from .parser import (ArgumentParser, ConfigError, cfg_from_args, get_args_parser, load_config, merge_known,
                     merge_opts, plan_key, plan_opts)

__all__ = ["ArgumentParser", "get_cfg", "load_config", "get_args_parser", "cfg_from_args", "merge_opts", "merge_known",
           "plan_key", "plan_opts", "ConfigError", "check_cfg", "CHOICES", "MODEL_FAMILIES", "FAMILY_SECTIONS"]
