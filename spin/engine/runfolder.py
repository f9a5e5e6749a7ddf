"""A run folder is one run's, and stays consistent whatever happens to the process.

* :class:`RunLock` — OUTPUT_DIR/.spin.lock names the process that trains there; a second
  ``spin train`` on the folder is refused while that process lives. A lock left by a killed run
  (its process is gone on this host) is stale and taken over.
* :func:`atomic_write` — files appear complete or not at all; :func:`remove_temp_files` clears
  what a killed writer left.
* :func:`record_config` — config.yaml is the config of the latest start; a start whose config
  differs prints the difference and keeps the previous one in config_history/.
"""
from __future__ import annotations

import difflib
import glob
import json
import os
import socket
import tempfile
import time
from typing import Callable, Optional

from ..errors import SpinError

TEMP_PREFIX = ".tmp_"
LOCK_NAME = ".spin.lock"


class RunFolderError(SpinError, RuntimeError):
    """OUTPUT_DIR cannot be used by this run; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable) -> None:
    """``write(binary_file)`` into a temp file in the same folder, fsync, then rename: a reader
    (or a run killed mid-write) never sees a half-written file under the final name. The file
    gets the permissions of a plain ``open`` (the umask), not mkstemp's private 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temp_files(*folders: str) -> list[str]:
    """Delete the temp files a killed writer left in ``folders``; returns their paths."""
    gone = []
    for folder in folders:
        for p in glob.glob(os.path.join(folder, TEMP_PREFIX + "*")):
            os.remove(p)
            gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of a run folder by this process (a context manager)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def acquire(self) -> Optional[dict]:
        """Take the lock; returns the stale lock it replaced (or None)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        stale = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    os.remove(self.path)  # a killed run's lock: take over
                    stale = holder
                    continue
                where = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                         if holder else "another process")
                raise RunFolderError(
                    f"OUTPUT_DIR {os.path.dirname(self.path)!r} is in use by {where}; wait for that run, "
                    f"stop it, or choose another OUTPUT_DIR (if that process is gone, delete {self.path})")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return stale
        raise RunFolderError(f"could not take the lock {self.path}; retry")

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held and self._read().get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def record_config(folder: str, text: str) -> Optional[str]:
    """Write config.yaml; if it held another config, keep that one in config_history/ and return
    the unified diff (old -> new) to print."""
    path = os.path.join(folder, "config.yaml")
    old = open(path).read() if os.path.exists(path) else None
    if old == text:
        return None
    diff = None
    if old is not None:
        hist = os.path.join(folder, "config_history")
        os.makedirs(hist, exist_ok=True)
        n = len(glob.glob(os.path.join(hist, "config_*.yaml")))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
        os.replace(path, os.path.join(hist, f"config_{n:03d}_{stamp}.yaml"))
        diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                            "config.yaml (before)", "config.yaml (now)", n=0))
    atomic_write(path, lambda f: f.write(text.encode()))
    return diff
