"""Training curves as a picture: train loss, learning rate and val top-1 per epoch of one or
several runs on shared axes, read from their checkpoints/metrics.csv (matplotlib's Agg canvas: no
display, no global pyplot state). Every training run writes OUTPUT_DIR/curves.png at each
evaluation and at its end; ``spin plot`` draws any runs side by side."""
from __future__ import annotations

import io
import os
from typing import Optional, Sequence

from .log import MetricsCSV
from .runfolder import RunFolderError, atomic_write


def save_png(fig, path: str) -> None:
    """A matplotlib Figure as a PNG file, written atomically (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def read_metrics(run_dir: str) -> list[dict]:
    """The epoch rows of a run folder's checkpoints/metrics.csv (floats; '' where not evaluated)."""
    path = os.path.join(run_dir, "checkpoints", "metrics.csv")
    if not os.path.isdir(run_dir):
        raise RunFolderError(f"{run_dir!r} is not a folder; give a run's OUTPUT_DIR")
    if not os.path.isfile(path):
        raise RunFolderError(f"{run_dir!r} has no checkpoints/metrics.csv: it is not a spin run folder, "
                             f"or its run has not finished an epoch yet")
    rows = MetricsCSV(path).rows()
    if not rows:
        raise RunFolderError(f"{path} holds no finished epoch yet")
    return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows]


def plot_runs(run_dirs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None) -> list[str]:
    """Draw the runs' curves into ``out`` (PNG, written atomically); returns the legend labels."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = [(d, read_metrics(d)) for d in run_dirs]
    labels = list(labels) if labels else [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    fig = Figure(figsize=(13, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [("train_loss", "train loss", axes[0]), ("lr", "learning rate", axes[1]),
              ("val_top1_err", "val top-1 (%)", axes[2])]
    for (_, rows), label in zip(runs, labels):
        epochs = [int(r["epoch"]) for r in rows]
        color = None
        for key, title, ax in panels:
            xs = [e for e, r in zip(epochs, rows) if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            if key == "val_top1_err":
                ys = [100.0 - y for y in ys]
            if xs:
                line, = ax.plot(xs, ys, marker="o" if key == "val_top1_err" else None, markersize=3,
                                label=label, color=color)
                color = line.get_color()  # one colour per run on every panel
    for key, title, ax in panels:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    legend = axes[2].legend(loc="lower right", fontsize="small")
    save_png(fig, out)
    return [t.get_text() for t in legend.get_texts()]
