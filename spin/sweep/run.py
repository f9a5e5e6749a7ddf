"""Running a sweep's trials through submitit (the convention of DeiT's and ConvNeXt's
``run_with_submitit.py``): ``local`` runs up to ``jobs`` trials at once as processes on this machine,
splitting its CPU threads between them; ``slurm`` submits ready trials as SLURM job arrays (GPUs per
trial, partition, time limit, array parallelism; a multi-GPU trial takes the DDP path, one task per
GPU). The driver waits for parents before it submits their children.

Each trial writes OUTPUT_DIR/sweep_trial.json: who it is (group, name, seed, grid values, parent,
config files, overrides and the resolved config), its status (running, done, failed with its error
line, stopped) and its attempts (the epoch each started at). A rerun skips done trials, and resumes
the others from their last checkpoint (TRAIN.AUTO_RESUME): a trial is trained from scratch at most
once. What a trial folder holds is compared with what the rerun asks (:func:`changed_trials`,
:mod:`spin.identity`): a trial whose results come from other settings is never skipped or resumed
silently.

A sweep is a job: one at a time per folder (its RunLock); its trials stop with it — Ctrl-C, a kill
of the driver (each trial watches its driver and the sweep's stop file), SIGTERM — and record
"stopped"; a rerun waits for stopping trials to release their folders.
"""
from __future__ import annotations

import _thread
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Callable, Iterable, Optional

import yaml

from .. import identity as idn
from ..config import get_cfg, load_config, merge_known
from ..engine.checkpoint import (checkpoint_identity, checkpoint_path, epochs_done, latest_checkpoint,
                                 load_checkpoint)
from ..engine.log import format_eta
from ..engine.runfolder import RunLock, atomic_write, lock_holder
from ..errors import SpinError
from .spec import SweepError, Trial, max_epoch

STATUS = "sweep_trial.json"
STOP_PREFIX = ".stop-"


class SweepStopped(SpinError):
    """Ctrl-C: the running trials were stopped; rerunning the command resumes them."""


class TrialsFailed(SpinError):
    """The sweep ran to its end but some trials failed (each recorded with its error)."""
    exit_status = 1


def read_status(out: str) -> dict:
    try:
        with open(os.path.join(out, STATUS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_status(out: str, **fields) -> dict:
    data = {**read_status(out), **fields}
    atomic_write(os.path.join(out, STATUS), lambda f: f.write(json.dumps(data, indent=1).encode()))
    return data


def trial_cfg(t: Trial):
    return load_config(list(t.cfg_files), list(t.run_opts))


def identity(t: Trial) -> dict:
    """Who the trial is, and the config it runs (its identity: :mod:`spin.identity`)."""
    return {"group": t.group, "name": t.name, "seed": t.seed, "values": t.values, "parent": t.parent_key,
            "cfg_files": t.cfg_files, "opts": t.run_opts, "config": trial_cfg(t).dump()}


def stored_config(st: dict):
    """The config a trial's sweep_trial.json says it runs (older files: from its files and opts)."""
    if st.get("config"):
        cfg = get_cfg()
        merge_known(cfg, yaml.safe_load(st["config"]))
        return cfg
    return load_config(list(st.get("cfg_files", [])), list(st.get("opts", [])))


def folder_identity(out: str) -> Optional[dict]:
    """What a trial folder's results come from: its newest checkpoint's identity; without one, the
    config it last started with, if that start left metrics; None for a folder without results."""
    ck = latest_checkpoint(out)
    if ck:
        return checkpoint_identity(load_checkpoint(ck, mmap=True))
    started = os.path.join(out, "config.yaml")
    if not (os.path.isfile(os.path.join(out, "checkpoints", "metrics.csv")) and os.path.isfile(started)):
        return None
    with open(started) as f:
        return idn.identity_of_stored(yaml.safe_load(f))


def changed_trials(trials: list[Trial]) -> dict[str, str]:
    """{key: what differs} for every trial whose folder holds results of other settings than the
    request (a child of such a trial is rerun with it). Reads only."""
    changed = {}
    for t in trials:
        held = folder_identity(t.out) if os.path.isdir(t.out) else None
        refused, _ = idn.differences(held, idn.identity(trial_cfg(t)), "sweep") if held else ([], [])
        if refused:
            changed[t.key] = idn.describe(refused)
        elif t.parent_key in changed and held:
            changed[t.key] = f"its parent {t.parent_key} is rerun"
    return changed


def changed_error(changed: dict[str, str], out: str) -> SweepError:
    """One line per distinct difference, naming its trials and the two ways out."""
    by_diff: dict[str, list[str]] = {}
    for key, diff in changed.items():
        by_diff.setdefault(diff, []).append(key)
    return SweepError("\n".join(
        f"trial{'s' if len(keys) > 1 else ''} {', '.join(keys[:3])}{f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''}"
        f" hold{'' if len(keys) > 1 else 's'} results of other settings ({diff}); add --rerun-changed to retrain "
        f"{'them' if len(keys) > 1 else 'it'} in place (the old outputs are removed), or choose a new --out "
        f"(not {out!r})" for diff, keys in by_diff.items()))


def is_done(t: Trial) -> bool:
    if read_status(t.out).get("status") != "done":
        return False
    epochs = max_epoch(t.cfg_files, t.opts)
    return epochs is not None and os.path.isfile(checkpoint_path(t.out, epochs - 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (Linux: /proc), so a reused pid is not taken for it; '' where
    that cannot be read; None when there is no such process (or only its zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        if os.path.isdir("/proc"):
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _watch(stop_file: str, driver: dict, finished: threading.Event, period: float = 0.5) -> None:
    """Stop this trial as Ctrl-C would when its sweep asks (the stop file) or is gone (killed)."""
    local = driver.get("host") == socket.gethostname()
    while not finished.wait(period):
        if os.path.exists(stop_file) or (local and process_start(driver["pid"]) != driver["start"]):
            _thread.interrupt_main()
            return


def _as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _take_signals() -> None:
    """A local trial starts with SIGINT blocked (see :func:`submit_trials`): Ctrl-C and SIGTERM stop it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _as_interrupt)


def run_trial(spec: dict) -> dict:
    """The job an executor runs: one ``spin train`` of the trial, in this process; stopped by its
    sweep (Ctrl-C, the stop file, the driver's end) it records "stopped"."""
    finished = threading.Event()
    try:
        _take_signals()
        if spec.get("stop_file"):
            threading.Thread(target=_watch, args=(spec["stop_file"], spec.get("driver") or {}, finished),
                             daemon=True).start()
        result = _run_trial(spec)
        finished.set()
        return result
    except KeyboardInterrupt:
        finished.set()
        return write_status(spec["out"], status="stopped", error="")


def _run_trial(spec: dict) -> dict:
    import torch

    from ..engine.launch import launch, run_net_job

    out = spec["out"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    init_method = f"tcp://127.0.0.1:{_free_port()}"  # a local trial with NUM_GPUS > 1 spawns
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # a multi-GPU SLURM trial: one task per GPU
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()
        init_method = "env://"
        if int(os.environ.get("SLURM_PROCID", "0")) != 0:  # rank 0 alone keeps the trial's record
            cfg = load_config(spec["cfg_files"], spec["opts"])
            launch(cfg, init_method, run_net_job)
            return {}
    last = latest_checkpoint(out)
    start = 0 if last is None else epochs_done(last)
    attempts = read_status(out).get("attempts", []) + [{"start_epoch": start, "pid": os.getpid(),
                                                        "pid_start": process_start(os.getpid()),
                                                        "host": socket.gethostname(),
                                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}]
    write_status(out, status="running", attempts=attempts, error="")
    t0 = time.time()
    try:
        cfg = load_config(spec["cfg_files"], spec["opts"])
        launch(cfg, init_method, run_net_job)
    except SpinError as e:
        return write_status(out, status="failed", error=str(e).splitlines()[0], seconds=time.time() - t0)
    except Exception as e:  # noqa: BLE001  (a bug in one trial must not stop the others)
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return write_status(out, status="failed", seconds=time.time() - t0,
                            error=f"{type(e).__name__}: {e} ({os.path.basename(tb.filename)}:{tb.lineno})")
    return write_status(out, status="done", error="", seconds=time.time() - t0)


def make_executor(kind: str, folder: str, jobs: int, slurm: dict):
    import submitit

    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=7 * 24 * 60, nodes=1, tasks_per_node=1, gpus_per_node=0)
        return ex
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as e:
        raise SweepError(f"--executor slurm needs a SLURM cluster ({e}); run it on the cluster's login "
                         f"node, or add --dry-run to print the submission") from None
    ex.update_parameters(**slurm_parameters(slurm))
    return ex


def slurm_parameters(slurm: dict) -> dict:
    gpus = int(slurm.get("gpus", 1))
    params = dict(name="spin-sweep", nodes=1, gpus_per_node=gpus, tasks_per_node=max(gpus, 1),
                  cpus_per_task=int(slurm.get("cpus", 10)), timeout_min=int(slurm.get("time", 60 * 24)),
                  slurm_array_parallelism=int(slurm.get("array_parallelism", 64)))
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    return params


def slurm_submission(folder: str, slurm: dict, trials: int) -> str:
    """The sbatch script a SLURM submission of ``trials`` ready trials gets (--dry-run prints it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    p = slurm_parameters(slurm)
    return _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {folder}", folder=folder,
        job_name=p["name"], partition=p.get("slurm_partition"), time=p["timeout_min"], nodes=1,
        ntasks_per_node=p["tasks_per_node"], cpus_per_task=p["cpus_per_task"],
        gpus_per_node=p["gpus_per_node"], array_parallelism=p["slurm_array_parallelism"],
        map_count=trials if trials > 1 else None)


@contextlib.contextmanager
def _sigint_blocked():
    """Processes started inside inherit a blocked SIGINT: submitit's job controllers then sit out a
    Ctrl-C quietly (no traceback, no SIGKILL of the trial a second later) and the trial, which
    unblocks it, stops cleanly. Blocked, not ignored: a Ctrl-C meanwhile reaches the driver after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def submit_trials(ex, executor: str, specs: list[dict]) -> list:
    """Submit trials: one local process each, or one SLURM job array for all of them."""
    slurm_array = executor == "slurm" and len(specs) > 1
    with ex.batch() if slurm_array else _sigint_blocked() if executor == "local" else contextlib.nullcontext():
        return [ex.submit(run_trial, s) for s in specs]


class Progress:
    """One line: trials done / running / failed and the ETA (a rewritten line on a terminal)."""

    def __init__(self, total: int, jobs: int, say: Callable[[str], None]):
        self.total, self.jobs, self.say, self.last = total, jobs, say, ""
        self.durations: list[float] = []
        self.tty = sys.stderr.isatty()

    def show(self, done: int, running: int, failed: int, waiting: int) -> None:
        left = self.total - done - failed
        eta = (sum(self.durations) / len(self.durations) * left / max(1, min(self.jobs, left))
               if self.durations and left else 0.0)
        line = (f"sweep: {done}/{self.total} done, {running} running, {failed} failed, {waiting} waiting"
                f"{', eta ' + format_eta(eta) if self.durations and left else ''}")
        if line != self.last:
            if self.tty:
                print("\r" + line.ljust(len(self.last)), end="", file=sys.stderr, flush=True)
            else:
                self.say(line)
            self.last = line

    def close(self) -> None:
        if self.tty and self.last:
            print(file=sys.stderr)


def _still_running(folder: str) -> bool:
    """The folder's lock is held, or the process of its last attempt (this host) still lives."""
    if lock_holder(folder):
        return True
    st = read_status(folder)
    last = (st.get("attempts") or [{}])[-1]
    if st.get("status") != "running" or last.get("host") != socket.gethostname() or not last.get("pid"):
        return False
    start = process_start(last["pid"])
    return start is not None and start == last.get("pid_start", start)


def _wait_free(folder: str, timeout: float = 120.0) -> None:
    """A trial of a sweep that was killed stops on its own (it watches its driver): wait for it to
    end rather than fail on its lock or race its last record."""
    deadline = time.time() + timeout
    while _still_running(folder) and time.time() < deadline:
        time.sleep(0.2)


def _prepare(trials: list[Trial], rerun: set, say) -> tuple[dict, list]:
    """Status of the done trials and the list of those to run; reruns ``rerun`` from scratch."""
    status, pending = {}, []
    for t in trials:
        _wait_free(t.out)
        if t.key in rerun and os.path.isdir(t.out):
            shutil.rmtree(t.out)
            say(f"sweep: {t.key}: removed the outputs of its earlier settings; training it again")
        os.makedirs(t.out, exist_ok=True)
        if is_done(t):
            status[t.key] = "done"  # its record stays the one its results were made with
        else:
            write_status(t.out, **identity(t))
            pending.append(t)  # configs were checked up front (check_trials)
    return status, pending


def run_sweep(trials: list[Trial], out: str, executor: str = "local", jobs: int = 1,
              slurm: Optional[dict] = None, threads: int = 0, poll_s: float = 0.5,
              say: Callable[[str], None] = print, rerun: Iterable[str] = ()) -> dict:
    """Run the trials not yet done, holding the sweep folder's lock; returns {key: status}.
    ``rerun``: keys of trials retrained from scratch (their folders emptied first). Raises
    SweepStopped on Ctrl-C / SIGTERM."""
    os.makedirs(out, exist_ok=True)
    lock = RunLock(out, name="--out", what="sweep")
    lock.acquire()
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _as_interrupt)
    try:
        for stale in glob.glob(os.path.join(out, STOP_PREFIX + "*")):
            os.remove(stale)  # left by a sweep that was killed while stopping
        status, pending = _prepare(trials, set(rerun), say)
        skipped = len(status)
        if skipped:
            say(f"sweep: {skipped} of {len(trials)} trials already done, skipped")
        if pending:
            _drive(trials, pending, status, out, executor, jobs, slurm or {}, threads, poll_s, say)
        return status
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        lock.release()


def _drive(trials, pending, status, out, executor, jobs, slurm, threads, poll_s, say) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    ex = make_executor(executor, os.path.join(out, ".submitit"), jobs, slurm)
    progress = Progress(len(trials), jobs if executor == "local" else len(trials), say)
    stop_file = os.path.join(os.path.abspath(out), STOP_PREFIX + uuid.uuid4().hex)
    driver = {"pid": os.getpid(), "start": process_start(os.getpid()), "host": socket.gethostname()}
    running: dict = {}  # key -> (trial, job, start time)
    try:
        while pending or running:
            ready = _ready(pending, status)
            room = jobs - len(running) if executor == "local" else len(ready)
            batch = ready[:max(room, 0)]
            if batch:
                specs = [{"out": t.out, "cfg_files": t.cfg_files, "opts": t.run_opts, "stop_file": stop_file,
                          "driver": driver, "threads": threads if executor == "local" else 0} for t in batch]
                for t, job in zip(batch, submit_trials(ex, executor, specs)):
                    running[t.key] = (t, job, time.time())
                    pending.remove(t)
                    status[t.key] = "running"
            _collect(running, status, progress, say)
            counts = [sum(v == s for v in status.values()) for s in ("done", "running", "failed")]
            progress.show(*counts, len(pending))
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(running, status, stop_file, executor)
        progress.close()
        raise SweepStopped(f"stopped: {sum(v == 'done' for v in status.values())} of {len(trials)} trials "
                           f"done; rerun to resume") from None
    progress.close()


def _ready(pending: list, status: dict) -> list:
    """Trials whose parent is done; a child of a failed parent fails without running."""
    ready = []
    for t in list(pending):
        parent = status.get(t.parent_key) if t.parent else "done"
        if parent == "failed":
            write_status(t.out, status="failed", error=f"its parent {t.parent_key} failed")
            status[t.key] = "failed"
            pending.remove(t)
        elif parent == "done":
            ready.append(t)
    return ready


def _collect(running: dict, status: dict, progress: Progress, say) -> None:
    for key, (t, job, t0) in list(running.items()):
        if not job.done():
            continue
        try:
            result = job.result()
        except Exception as e:  # noqa: BLE001  (the job's process died)
            result = write_status(t.out, status="failed", error=f"the trial's job failed: "
                                                                f"{str(e).splitlines()[-1][:300]}")
        status[key] = result.get("status", "failed")
        if status[key] == "failed":
            say(f"sweep: {key} failed: {result.get('error', '')}")
        elif status[key] == "stopped":  # stopped from outside (SIGTERM, or the group's Ctrl-C first)
            raise KeyboardInterrupt
        else:
            progress.durations.append(time.time() - t0)
        del running[key]


def _stop(running: dict, status: dict, stop_file: str, executor: str, timeout: float = 120.0) -> None:
    """Stop the running trials and wait for them; each records "stopped" (or "done" if it ended
    first). A second Ctrl-C must not cut this short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    atomic_write(stop_file, lambda f: f.write(b"stop\n"))
    if executor == "slurm":
        for _, job, _ in running.values():
            job.cancel(check=False)
    deadline = time.time() + timeout
    while time.time() < deadline and not all(job.done() for _, job, _ in running.values()):
        time.sleep(0.2)
    for key, (t, _, _) in running.items():
        st = read_status(t.out).get("status")
        if st not in ("done", "failed", "stopped"):  # killed before it could say so itself
            write_status(t.out, status="stopped")
        status[key] = st if st in ("done", "failed") else "stopped"
    os.remove(stop_file)
