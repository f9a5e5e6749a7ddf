"""Former home of :mod:`spin.tools.fuse` (spin fuse's fused-checkpoint tool); imports written against it keep working."""
from .tools.fuse import *  # noqa: F401,F403
