"""Run logs: ``json_stats: {...}`` lines (stdout and OUTPUT_DIR/stdout.log), a per-epoch CSV next
to the checkpoints, and TensorBoard scalars. Only rank 0 writes files."""
from __future__ import annotations

import csv
import logging
import os
import resource
import sys

import simplejson
import torch

LOGGER_NAME = "spin"


def setup_logging(output_dir: str, is_master: bool) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    log.propagate = False
    if not is_master:
        log.setLevel(logging.ERROR)
        return log
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
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
    get_logger().info("json_stats: " + simplejson.dumps(stats, sort_keys=True, use_decimal=True))


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


class MetricsCSV:
    """One row per epoch; columns fixed by the first row. Appends across resumed runs."""

    FIELDS = ["epoch", "train_loss", "lr", "train_time", "val_loss", "val_top1_err",
              "val_top5_err", "skipped_images"]

    def __init__(self, path: str):
        self.path = path

    def write(self, row: dict) -> None:
        new = not os.path.exists(self.path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.FIELDS})


class TensorBoard:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir)

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self):
        self.writer.flush()
        self.writer.close()
