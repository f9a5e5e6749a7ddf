"""Former home of :mod:`spin.tools.bench`; imports written against it keep working."""
from .tools.bench import *  # noqa: F401,F403
