"""Former home of :mod:`spin.tools.export` (the deployment exporter (spin export)); imports written against it keep working."""
from .tools.export import *  # noqa: F401,F403
