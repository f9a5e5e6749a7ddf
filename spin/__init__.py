"""spin: sharing parameters across the layers of isotropic vision networks (SPIN, ECCV'22)."""
from .sharing import SharingError, SharingPlan, build_plan

__version__ = "0.1.0"
__all__ = ["SharingPlan", "SharingError", "build_plan", "__version__"]
