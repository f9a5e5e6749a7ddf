"""Former home of :mod:`spin.tools.stats` (spin stats); imports written against it keep working."""
from .tools.stats import *  # noqa: F401,F403
