"""Running a sweep's trials through submitit (the convention of DeiT's and ConvNeXt's
``run_with_submitit.py``): ``local`` runs up to ``jobs`` trials at once as processes on this machine,
splitting its CPU threads between them; ``slurm`` submits ready trials as SLURM job arrays (GPUs per
trial, partition, time limit, array parallelism; a multi-GPU trial takes the DDP path, one task per
GPU). The driver waits for parents before it submits their children.

Each trial writes OUTPUT_DIR/sweep_trial.json: who it is (group, name, seed, grid values, parent,
config files and overrides), its status (running, done, failed with its error line, stopped) and its
attempts (the epoch each started at). A rerun skips done trials, and resumes the others from their
last checkpoint (TRAIN.AUTO_RESUME): a trial is trained from scratch at most once.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from typing import Callable, Optional

from ..config import load_config
from ..engine.checkpoint import checkpoint_path, epochs_done, latest_checkpoint
from ..engine.logging import format_eta
from ..engine.runfolder import atomic_write
from ..errors import SpinError
from .spec import SweepError, Trial, max_epoch

STATUS = "sweep_trial.json"


class SweepStopped(SpinError):
    """Ctrl-C: the running trials were stopped; rerunning the command resumes them."""


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


def identity(t: Trial) -> dict:
    return {"group": t.group, "name": t.name, "seed": t.seed, "values": t.values, "parent": t.parent_key,
            "cfg_files": t.cfg_files, "opts": t.run_opts}


def is_done(t: Trial) -> bool:
    if read_status(t.out).get("status") != "done":
        return False
    epochs = max_epoch(t.cfg_files, t.opts)
    return epochs is not None and os.path.isfile(checkpoint_path(t.out, epochs - 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trial(spec: dict) -> dict:
    """The job an executor runs: one ``spin train`` of the trial, in this process."""
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


def submit_trials(ex, executor: str, specs: list[dict]) -> list:
    """Submit trials: one local process each, or one SLURM job array for all of them."""
    with ex.batch() if executor == "slurm" and len(specs) > 1 else contextlib.nullcontext():
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


def run_sweep(trials: list[Trial], out: str, executor: str = "local", jobs: int = 1,
              slurm: Optional[dict] = None, threads: int = 0, poll_s: float = 0.5,
              say: Callable[[str], None] = print) -> dict:
    """Run the trials not yet done; returns {key: status}. Raises SweepStopped on Ctrl-C."""
    os.makedirs(out, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    status: dict[str, str] = {}
    pending: list[Trial] = []
    for t in trials:
        os.makedirs(t.out, exist_ok=True)
        write_status(t.out, **identity(t))
        if is_done(t):
            status[t.key] = "done"
            continue
        pending.append(t)  # configs were checked up front (check_trials); a trial records its own run-time error
    skipped = sum(v == "done" for v in status.values())
    if skipped:
        say(f"sweep: {skipped} of {len(trials)} trials already done, skipped")
    if not pending:
        return status
    ex = make_executor(executor, os.path.join(out, ".submitit"), jobs, slurm or {})
    progress = Progress(len(trials), jobs if executor == "local" else len(trials), say)
    running: dict = {}  # key -> (trial, job, start time)
    try:
        while pending or running:
            ready = []
            for t in list(pending):
                parent = status.get(t.parent_key) if t.parent else "done"
                if parent == "failed":
                    write_status(t.out, status="failed", error=f"its parent {t.parent_key} failed")
                    status[t.key] = "failed"
                    pending.remove(t)
                elif parent == "done":
                    ready.append(t)
            room = jobs - len(running) if executor == "local" else len(ready)
            batch = ready[:max(room, 0)]
            if batch:
                specs = [{"out": t.out, "cfg_files": t.cfg_files, "opts": t.run_opts,
                          "threads": threads if executor == "local" else 0} for t in batch]
                submitted = submit_trials(ex, executor, specs)
                for t, job in zip(batch, submitted):
                    running[t.key] = (t, job, time.time())
                    pending.remove(t)
                    status[t.key] = "running"
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
                else:
                    progress.durations.append(time.time() - t0)
                del running[key]
            counts = [sum(v == s for v in status.values()) for s in ("done", "running", "failed")]
            progress.show(*counts, len(pending))
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for t, job, _ in running.values():
            job.cancel(check=False)
        deadline = time.time() + 30  # let the trials release their run folders
        while time.time() < deadline and not all(job.done() for _, job, _ in running.values()):
            time.sleep(0.2)
        for t, job, _ in running.values():
            write_status(t.out, status="stopped")
        progress.close()
        raise SweepStopped(f"stopped: {sum(v == 'done' for v in status.values())} of {len(trials)} trials done, "
                           f"{len(running)} stopped; rerun the same command to resume them") from None
    progress.close()
    return status

