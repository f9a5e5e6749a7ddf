"""What a person sees: a bar and one line per epoch on a terminal, json_stats lines in pipes and
always in stdout.log; training curves as pictures (spin plot, OUTPUT_DIR/curves.png)."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest
from PIL import Image

from conftest import make_image_folder
from spin.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny-ws.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("ux") / "data", n_train=8, n_val=4)


def args(data, out, *extra):
    return ["train", "--cfg", TINY, "DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "2",
            "TEST.ENABLE", "False", *extra]


def run_in_terminal(cmd):
    """Run cmd with stdout and stderr on a pseudo-terminal; returns everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120x40 terminal
    p = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, close_fds=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120"))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif p.poll() is not None:
            break
    p.wait()
    os.close(master)
    return p.returncode, b"".join(chunks).decode(errors="replace")


def test_terminal_shows_bars_and_epoch_lines_and_the_log_keeps_json(data, tmp_path):
    out = tmp_path / "tty"
    rc, screen = run_in_terminal([sys.executable, "-m", "spin.cli", *args(data, out)])
    assert rc == 0, screen
    assert "json_stats" not in screen
    lines = [l for l in screen.replace("\r", "\n").splitlines() if "epoch 2/2  train loss" in l]
    assert len(lines) == 1 and "val top-1" in lines[0] and "(best" in lines[0]
    assert "epoch 1/2:" in screen and "img/s" in screen and "eta" in screen  # tqdm's bar for epoch 1
    log = (out / "stdout.log").read_text()
    kinds = [l.split('"_type": "')[1].split('"')[0] for l in log.splitlines() if "json_stats" in l]
    assert kinds.count("train_epoch") == 2 and kinds.count("val_epoch") == 2 and "train_iter" in kinds
    assert "epoch 2/2  train loss" in log


def test_pipes_get_json_lines_as_before(data, tmp_path):
    p = subprocess.run([sys.executable, "-m", "spin.cli", *args(data, tmp_path / "pipe")], capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0 and p.stdout.count('json_stats: {"_type": "train_epoch"') == 2
    assert "epoch 1/2:" not in p.stderr  # no bar without a terminal


def test_plot_two_runs_and_curves_after_a_run(data, tmp_path, capsys):
    for name, lr in (("a", "0.01"), ("b", "0.003")):
        assert main(args(data, tmp_path / name, "SOLVER.BASE_LR", lr)) == 0
        png = tmp_path / name / "curves.png"
        assert png.exists() and Image.open(png).size[0] > 500  # written by the run itself
    capsys.readouterr()
    out = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: a, b"  # one legend entry per run
    with Image.open(out) as im:
        im.verify()
    assert main(["plot", str(tmp_path / "a"), "--labels", "x,y"]) == 2
    assert "--labels has 2 entries for 1 runs" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2 and "not a spin run folder" in capsys.readouterr().err
