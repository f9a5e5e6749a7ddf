"""spin: sharing parameters across the layers of isotropic vision networks (SPIN, ECCV'22).

    import spin
    wfws = spin.share(model, share_rate=2, fusion="mean")   # any model with a stack of blocks
    ws = spin.fuse(wfws)                                     # its WS export
"""
from .sharing import SharingError, SharingPlan, build_plan
from .share_transform import cached, fuse, share, sharing_of, unique_parameters
from . import models  # noqa: E402,F401  (registers the families' scopes and named builders)
from .models import create_model, list_models  # noqa: E402

__version__ = "0.2.0"
__all__ = ["share", "fuse", "cached", "unique_parameters", "sharing_of", "SharingPlan", "SharingError",
           "build_plan", "create_model", "list_models", "models", "__version__"]
