"""Checks of the paths a command will write, made before it reads or computes anything, so a bad
``--out`` costs nothing and destroys nothing: a folder that is a file, a read-only place, an
output that already exists, an output that is one of the command's own inputs."""
from __future__ import annotations

import os
from typing import Iterable, Optional

from .errors import SpinError


class OutputError(SpinError):
    """An output path a command cannot or must not write."""


def _nearest_existing(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def folder_problem(path: str, name: str) -> Optional[str]:
    """None if files can be created under folder ``path`` (made if missing), else why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{name} {path!r} is a file, not a folder; choose a folder"
    probe = _nearest_existing(path or ".")
    if not os.path.isdir(probe):
        return f"{name} {path!r} cannot be created: {probe!r} is a file; choose another folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{name} {path!r} is not writable ({probe!r} is read-only or denies writing); choose a writable folder"
    return None


def check_folder(path: str, name: str) -> None:
    problem = folder_problem(path, name)
    if problem:
        raise OutputError(problem)


def check_file(path: str, name: str, overwrite: bool = True, inputs: Iterable[str] = (),
               suffix: str = "") -> None:
    """``path`` may be written as a file: not a folder, not one of ``inputs``, not an existing file
    unless ``overwrite``, ending in ``suffix`` when given, in a writable folder."""
    if suffix and not path.lower().endswith(suffix):
        raise OutputError(f"{name} {path!r} must end in {suffix}")
    if os.path.isdir(path):
        raise OutputError(f"{name} {path!r} is a folder; name a file")
    for src in inputs:
        if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
            raise OutputError(f"{name} {path!r} is the input {src!r}: writing it would destroy the input; "
                              f"choose another {name}")
    if os.path.exists(path) and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it or choose another {name}")
    check_folder(os.path.dirname(os.path.abspath(path)), f"the folder of {name}")
