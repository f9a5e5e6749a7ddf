"""A run folder is one run's, and stays consistent whatever happens to the process.

* :class:`RunLock` — an OS file lock on OUTPUT_DIR/.spin.lock, held by the process that trains
  there; a second ``spin train`` on the folder is refused while that process lives. The lock ends
  with its process, also when it is killed, and the next run takes the folder over.
* :func:`atomic_write` — files appear complete or not at all; :func:`remove_temp_files` clears
  what a killed writer left.
* :func:`record_config` — config.yaml is the config of the latest start; a start whose config
  differs prints the difference and keeps the previous one in config_history/.
"""
from __future__ import annotations

import difflib
import errno
import fcntl
import glob
import json
import os
import socket
import tempfile
import time
from typing import Callable, Optional

from ..errors import SpinError
from ..paths import OutputError

TEMP_PREFIX = ".tmp_"
LOCK_NAME = ".spin.lock"


class RunFolderError(SpinError, RuntimeError):
    """OUTPUT_DIR cannot be used by this run; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteError(OutputError):
    """A file could not be written (full disk, read-only or forbidden place); the message names it."""


# What a write fails with when the place, not the program, is at fault: reported as one line
# naming the file. Other errors are bugs and keep their traceback.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "the operation is not permitted", errno.EFBIG: "the file is too large for the file system"}
# torch.save's zip writer reports a failed write (a full disk, mostly) as a RuntimeError with no errno.
_TORCH_WRITER = ("PytorchStreamWriter failed", "inline_container")


def atomic_write(path: str, write: Callable) -> None:
    """``write(binary_file)`` into a temp file in the same folder, fsync, then rename: a reader
    (or a run killed mid-write) never sees a half-written file under the final name. The file
    gets the permissions of a plain ``open`` (the umask), not mkstemp's private 0600. A write the
    place refuses (full disk, read-only, forbidden) is a WriteError naming ``path``; the temp file
    is removed and the file ``path`` held before (an earlier checkpoint, say) stays as it was."""
    try:
        _atomic_write(path, write)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise WriteError(f"cannot write {path}: {_WRITE_ERRNOS[e.errno]}; free space or choose a writable "
                         f"place, then rerun (files written before are intact)") from None
    except RuntimeError as e:
        if not any(m in str(e) for m in _TORCH_WRITER):
            raise
        raise WriteError(f"cannot write {path}: PyTorch's writer failed ({str(e).strip().splitlines()[0][-120:]}), "
                         f"mostly a full disk; free space, then rerun (files written before are intact)") from None


def _atomic_write(path: str, write: Callable) -> None:
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


class RunLock:
    """Exclusive use of a run folder by this process (a context manager).

    The lock is an OS file lock (``flock``) on OUTPUT_DIR/.spin.lock, so it ends with its process,
    also under SIGKILL: no stale-pid guessing, no race between two runs taking over. The file names
    the holder (pid, host, start) for the error message; a file left with a name in it was left by
    a run that is gone, and :meth:`acquire` returns that name."""

    def __init__(self, folder: str, name: str = "OUTPUT_DIR", what: str = "run"):
        self.path = os.path.join(folder, LOCK_NAME)
        self.name, self.what = name, what  # how the error message calls the folder and its user
        self.fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> Optional[dict]:
        """Take the lock; returns what a run that is gone left in it (or None)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_json(fd)
                os.close(fd)
                where = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                         if holder else "another process")
                raise RunFolderError(
                    f"{self.name} {os.path.dirname(self.path)!r} is in use by {where}; wait for that "
                    f"{self.what}, stop it, or choose another {self.name}") from None
            try:  # the file we locked must still be the one at the path (a holder deletes it on release)
                current = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            left = _read_json(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd = fd
            return left or None
        raise RunFolderError(f"could not take the lock {self.path}; retry")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # still holding the lock: nobody can take a deleted file's lock
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def lock_holder(folder: str) -> Optional[dict]:
    """What the process holding ``folder``'s lock wrote (pid, host, start), or None when no live
    process holds it. Takes nothing: a shared lock held for an instant only probes."""
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        held = _read_json(fd) or {"pid": None}
        os.close(fd)
        return held
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return None


def _read_json(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


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
