"""Former home of :mod:`spin.tools.analyze` (spin analyze); imports written against it keep working."""
from .tools.analyze import *  # noqa: F401,F403
