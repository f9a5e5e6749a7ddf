"""Former home of :mod:`spin.tools.predict`; imports written against it keep working."""
from .tools.predict import *  # noqa: F401,F403
