"""Config: SlowFast-schema defaults and the ``--cfg FILE KEY VALUE`` parser."""
from .defaults import get_cfg
from .parser import (ConfigError, cfg_from_args, get_args_parser, load_config, merge_known,
                     merge_opts)

__all__ = ["get_cfg", "load_config", "get_args_parser", "cfg_from_args", "merge_opts", "merge_known",
           "ConfigError"]
