"""Run logs. Every line goes to OUTPUT_DIR/stdout.log, including SlowFast's ``json_stats: {...}``
lines. The console gets the json_stats lines when it is not a terminal (pipes, schedulers, CI) or
with LOG_JSON_TO_CONSOLE True; on a terminal it gets a progress bar per epoch and one readable
line per epoch instead, written through tqdm so bar and lines never break each other. One record
per epoch (:func:`log_epoch`) feeds json_stats, checkpoints/metrics.csv and TensorBoard alike.
Only rank 0 writes."""
from __future__ import annotations

import csv
import io
import logging
import os
import resource
import sys
import time
from typing import Optional

import simplejson
import torch

from .runfolder import atomic_write

LOGGER_NAME = "spin"
JSON_PREFIX = "json_stats: "


class _Console(logging.StreamHandler):
    """stdout through tqdm.write (clears and redraws a live bar); json_stats only if asked."""

    def __init__(self, json_lines: bool):
        super().__init__(sys.stdout)
        self.json_lines = json_lines

    def emit(self, record):
        if not self.json_lines and record.getMessage().startswith(JSON_PREFIX):
            return
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001  (logging must never break a run)
            self.handleError(record)


def console_is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def setup_logging(output_dir: str, is_master: bool, json_to_console: Optional[bool] = None) -> logging.Logger:
    """``json_to_console`` None: json_stats lines on the console unless it is a terminal."""
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers:
        h.close()
    log.handlers.clear()
    log.propagate = False
    if not is_master:
        log.setLevel(logging.ERROR)
        return log
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    json_lines = not console_is_terminal() if json_to_console is None else json_to_console
    out = _Console(json_lines)
    out.setFormatter(fmt)
    log.addHandler(out)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        f = logging.FileHandler(os.path.join(output_dir, "stdout.log"))
        f.setFormatter(fmt)
        log.addHandler(f)
    return log


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def log_json_stats(stats: dict) -> None:
    stats = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.items()}
    get_logger().info(JSON_PREFIX + simplejson.dumps(stats, sort_keys=True, use_decimal=True))


def memory_gb(device: torch.device) -> float:
    """Peak GPU memory on CUDA, peak resident memory of the process on the CPU (GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d {h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


class MetricLogger:
    """Wraps one pass over a loader (DeiT's ``MetricLogger.log_every``): times data loading and
    steps, keeps sample-weighted means, shows a progress bar on a terminal (loss, lr, img/s, ETA
    of the whole run) and writes a ``train_iter`` json_stats line every ``log_period`` steps."""

    def __init__(self, header: str, total: int, log_period: int, device: torch.device,
                 bar: bool = False, iters_after: int = 0, stop_at_total: bool = True):
        self.header, self.total, self.log_period, self.device = header, total, log_period, device
        self.stop_at_total = stop_at_total  # False: ``total`` only sizes the bar and the ETA
        self.iters_after = iters_after  # iterations of the run after this pass (for the ETA)
        self.bar = None
        if bar and console_is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=header, leave=False, dynamic_ncols=True, file=sys.stderr)
        self.loss_sum = self.seen = self.skipped = 0.0
        self.lr = 0.0
        self.dt_data = self.dt_total = 0.0
        self.steps = 0
        self._last: dict = {}

    def update(self, n: int = 1, **values) -> None:
        self.seen += n
        if "loss" in values:
            self.loss_sum += values["loss"] * n
        self.lr = values.get("lr", self.lr)
        self._last = dict(values, n=n)

    def log_every(self, iterable):
        end = time.perf_counter()
        for i, batch in enumerate(iterable):
            if self.stop_at_total and i >= self.total:
                break
            t_data = time.perf_counter() - end
            yield batch
            dt = time.perf_counter() - end
            self.steps += 1
            self.dt_data += t_data
            self.dt_total += dt
            per_step = self.dt_total / self.steps
            eta = per_step * (self.total - i - 1 + self.iters_after)
            last = self._last
            if self.bar is not None:
                post = {"img/s": f"{last.get('n', 0) / max(dt, 1e-9):.0f}", "eta": format_eta(eta)}
                if "loss" in last:
                    post = {"loss": f"{last['loss']:.4f}", "lr": f"{last['lr']:.2e}", **post}
                self.bar.set_postfix(post, refresh=False)
                self.bar.update(1)
            if self.log_period and "loss" in last and (i + 1) % self.log_period == 0:
                log_json_stats({
                    "_type": "train_iter", "epoch": self.header.split()[-1], "iter": f"{i + 1}/{self.total}",
                    "loss": last["loss"], "lr": last["lr"], "dt": dt, "dt_data": t_data,
                    "dt_net": dt - t_data, "eta": format_eta(eta), "mem": memory_gb(self.device)})
            self._last = {}
            end = time.perf_counter()
        if self.bar is not None:
            self.bar.close()

    def summary(self) -> dict:
        done = max(self.steps, 1)
        return {"loss": self.loss_sum / max(self.seen, 1), "lr": self.lr, "dt": self.dt_total / done,
                "dt_data": self.dt_data / done, "time": self.dt_total, "iters": self.steps,
                "samples": int(self.seen), "skipped_images": int(self.skipped),
                "img_s": self.seen / max(self.dt_total, 1e-9)}


class MetricsCSV:
    """checkpoints/metrics.csv: one row per finished epoch. A resumed run first drops the rows
    of epochs it will train again (they ran after the checkpoint it resumes from), so a run
    killed at any moment ends with exactly one row per epoch. Rewrites are atomic."""

    FIELDS = ["epoch", "train_loss", "lr", "train_time", "train_img_s", "val_loss", "val_top1_err",
              "val_top5_err", "ema_val_top1_err", "ema_val_top5_err", "skipped_images", "teacher_time",
              "train_img_s_student"]

    def __init__(self, path: str):
        self.path = path

    def rows(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as f:
            return [r for r in csv.DictReader(f) if (r.get("epoch") or "").isdigit()]

    def keep_until(self, epoch: int) -> None:
        """Keep the rows of epochs 1..epoch (1-based) only."""
        rows = [r for r in self.rows() if int(r["epoch"]) <= epoch]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.path, lambda f: f.write(buf.getvalue().encode()))

    def write(self, row: dict) -> None:
        new = not os.path.exists(self.path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.FIELDS})


class TensorBoard:
    """Per-epoch scalars; ``purge_step`` drops events of epochs a resumed run trains again."""

    def __init__(self, log_dir: str, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir, purge_step=purge_step)

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self):
        self.writer.flush()
        self.writer.close()


_TB_NAMES = {"train_loss": "Train/loss", "lr": "Train/lr", "val_loss": "Val/loss",
             "val_top1_err": "Val/Top1_err", "val_top5_err": "Val/Top5_err",
             "ema_val_top1_err": "Val_EMA/Top1_err", "ema_val_top5_err": "Val_EMA/Top5_err"}


def log_epoch(record: dict, max_epoch: int, csv_file: Optional[MetricsCSV] = None,
              tensorboard: Optional[TensorBoard] = None) -> None:
    """One finished epoch: json_stats train_epoch (+ val_epoch), a metrics.csv row, TensorBoard
    scalars and a readable summary line."""
    epoch = record["epoch"]
    log_json_stats({"_type": "train_epoch", "epoch": f"{epoch}/{max_epoch}", "loss": record["train_loss"],
                    "lr": record["lr"], "dt": record["dt"], "dt_data": record["dt_data"],
                    "time": record["train_time"], "img_s": record["train_img_s"], "eta": record["eta"],
                    "mem": record["mem"], "skipped_images": record["skipped_images"],
                    **({"top1_err": record["train_top1_err"]} if "train_top1_err" in record else {}),
                    **({"teacher_time": record["teacher_time"], "img_s_student": record["train_img_s_student"]}
                       if "teacher_time" in record else {})})
    if "val_top1_err" in record:
        log_json_stats({"_type": "val_epoch", "epoch": f"{epoch}/{max_epoch}",
                        "top1_err": record["val_top1_err"], "top5_err": record["val_top5_err"],
                        "loss": record["val_loss"], "samples": record["val_samples"],
                        "min_top1_err": record["min_top1_err"], "mem": record["mem"],
                        **{k[4:]: record[k] for k in ("ema_val_top1_err", "ema_val_top5_err") if k in record}})
    if csv_file is not None:
        csv_file.write(record)
    if tensorboard is not None:
        tensorboard.scalars({tb: record[k] for k, tb in _TB_NAMES.items() if k in record}, epoch)
    line = (f"epoch {epoch}/{max_epoch}  train loss {record['train_loss']:.4f}  "
            f"{record['train_img_s']:.0f} img/s  {record['train_time']:.1f}s")
    if "teacher_time" in record:  # the teacher's share of the step
        line = line.replace(" img/s", f" img/s ({record['train_img_s_student']:.0f} without the teacher's "
                                      f"{record['teacher_time']:.1f}s)", 1)
    if "val_top1_err" in record:
        line += (f"  |  val top-1 {100 - record['val_top1_err']:.2f}%  top-5 "
                 f"{100 - record['val_top5_err']:.2f}%  (best {100 - record['min_top1_err']:.2f}%)")
    if "ema_val_top1_err" in record:
        line += f"  EMA top-1 {100 - record['ema_val_top1_err']:.2f}%"
    get_logger().info(line + f"  eta {record['eta']}")
