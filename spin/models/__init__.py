"""Models: ConvMixer (spin's, upstream keys), DeiT/ViT, MLP-Mixer and Swin (timm's; Swin shared per
stage), the isotropic ConvNeXt, each with vanilla, ws_ and wfws_ named builders; config -> model.
Hugging Face GPT-2 and Llama stacks (``lm``: their named scope parts, next-token distillation;
transformers not imported)."""
import warnings

from . import convmixer, convnext_iso, mixer, swin, vit  # noqa: F401  (register the named builders)
from . import lm  # noqa: F401  (after them: its parts reuse vit's names, whose canonical order stays)
from .convmixer import SpinConvMixer
from .convnext_iso import ConvNeXtIsotropic
from ..config import MODEL_FAMILIES
from .factory import build_model, family, family_of, model_kwargs, plan_from_cfg
from .family import FAMILIES, Family, register_family
from .registry import create_model, list_models, register_model
from .timm_interop import convert_timm_state_dict, register_with_timm

WSConvMixer = SpinConvMixer  # upstream's class name


def plan_section(cfg):
    """Deprecated: the plan keys are ``cfg.WEIGHT_SHARE`` for every family."""
    warnings.warn("spin.models.plan_section(cfg) is deprecated; read cfg.WEIGHT_SHARE (the plan section of every "
                  "family)", DeprecationWarning, stacklevel=2)
    return cfg.WEIGHT_SHARE


__all__ = ["SpinConvMixer", "WSConvMixer", "ConvNeXtIsotropic", "build_model", "model_kwargs",
           "plan_from_cfg", "plan_section", "family", "create_model", "list_models", "register_model",
           "convert_timm_state_dict", "register_with_timm", "MODEL_FAMILIES", "FAMILIES", "Family", "family_of",
           "register_family"]

register_with_timm()  # so timm.create_model("spin_ws_deit_small_patch16_224") works after import
