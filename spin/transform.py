"""Former name of :mod:`spin.share_transform` (it clashed with ``spin.data.transforms``); imports
written against it keep working."""
from .share_transform import *  # noqa: F401,F403
from .share_transform import __all__  # noqa: F401
