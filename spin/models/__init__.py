"""Models: ConvMixer (spin's, upstream keys), DeiT/ViT and MLP-Mixer (timm's), the isotropic
ConvNeXt, each with vanilla, ws_ and wfws_ named builders; config -> model."""
from . import convmixer, convnext_iso, mixer, vit  # noqa: F401  (register the named builders)
from .convmixer import SpinConvMixer
from .convnext_iso import ConvNeXtIsotropic
from .factory import MODEL_FAMILIES, build_model, family, model_kwargs, plan_from_cfg, plan_section
from .registry import create_model, list_models, register_model
from .timm_interop import convert_timm_state_dict, register_with_timm

WSConvMixer = SpinConvMixer  # upstream's class name

__all__ = ["SpinConvMixer", "WSConvMixer", "ConvNeXtIsotropic", "build_model", "model_kwargs",
           "plan_from_cfg", "plan_section", "family", "create_model", "list_models", "register_model",
           "convert_timm_state_dict", "register_with_timm", "MODEL_FAMILIES"]

register_with_timm()  # so timm.create_model("spin_ws_deit_small_patch16_224") works after import
