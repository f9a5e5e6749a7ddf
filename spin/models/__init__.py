"""Models: the ConvMixer family with sharing, a registry of named builders, config -> model."""
from . import builders  # noqa: F401  (registers the named builders)
from .convmixer import SpinConvMixer
from .factory import MODEL_FAMILIES, build_model, model_kwargs, plan_from_cfg
from .registry import create_model, list_models, register_model
from .timm_interop import convert_timm_state_dict, register_with_timm

WSConvMixer = SpinConvMixer  # upstream's class name

__all__ = ["SpinConvMixer", "WSConvMixer", "build_model", "model_kwargs", "plan_from_cfg",
           "create_model", "list_models", "register_model", "convert_timm_state_dict",
           "register_with_timm", "MODEL_FAMILIES"]

register_with_timm()  # so timm.create_model("spin_ws_convmixer_768_32_14_3") works after import
