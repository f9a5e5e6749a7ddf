"""The benchmark runs on a tiny config and writes valid output (no timing assertions)."""
import json
import math

import pytest

from spin.cli import main
from spin.tools.bench import BenchError
from spin.tools.bench import main as bench_main


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    assert main(["bench", "--preset", "tiny", "--warmup", "0", "--repeats", "1", "--iters", "1",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "tiny-cpu.json").read_text())
    md = (tmp_path / "tiny-cpu.md").read_text()
    models = res["models"]
    assert set(models) == {"timm", "timm_cl", "spin_timm_block", "spin_vanilla", "spin_ws", "spin_wfws"}
    for name, r in models.items():
        assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and r["activation_bytes"] > 0, name
        assert r["macs_per_image"] == models["timm"]["macs_per_image"]  # same C/D/P/K, same MACs
        # AdamW keeps exp_avg and exp_avg_sq per parameter plus a 4-byte step per tensor
        n_tensors = (r["optimizer_state_bytes"] - 2 * r["param_bytes"]) / 4
        assert n_tensors == int(n_tensors) and 0 < n_tensors < 100, name
    # optimizer state follows the unique parameters: WS holds 2 of the 4 pointwise sets
    assert models["spin_ws"]["params"] == models["spin_ws"]["unique_params"] < models["spin_vanilla"]["params"]
    assert models["spin_wfws"]["unique_params"] == models["spin_ws"]["params"]
    assert {"spin_ws/timm train", "spin_ws/timm_cl infer", "spin_wfws/spin_ws train"} <= set(res["ratios"])
    assert res["gemm_gflops"] > 0 and "| spin_ws |" in md and "GEMM" in capsys.readouterr().out


def test_bench_data_reports_images_per_worker_for_each_format(tmp_path, capsys):
    """spin bench --data at toy sizes: the fields, not the speed."""
    assert main(["bench", "--data", "--data-images", "8", "--data-size", "64x48", "--data-batch", "4",
                 "--data-workers", "1,2", "--warmup", "0", "--repeats", "1", "--gpu-img-s", "100",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "data-cpu.json").read_text())
    c = res["config"]
    assert (c["images"], c["image_size"], c["crop"], c["batch"]) == (8, [64, 48], 224, 4) and c["jpeg_kb"] > 0
    assert (c["aa"], c["re_prob"]) == ("rand-m9-mstd0.5-inc1", 0.25) and c["mixup"] > 0 and c["cutmix"] > 0
    assert [(r["format"], r["workers"]) for r in res["runs"]] == [("folder", 1), ("folder", 2), ("wds", 1), ("wds", 2)]
    for r in res["runs"]:
        assert r["img_s"] > 0 and r["img_s_per_worker"] > 0 and r["main_cpu_ms_per_img"] >= 0
    g = res["gpu"]
    assert g["img_s"] == 100 and g["source"] == "--gpu-img-s"
    for fmt in ("folder", "wds"):  # workers = GPU img/s / img/s per worker, rounded up
        assert g["workers_needed"][fmt] == math.ceil(100 / g["img_s_per_worker"][fmt])
    md = (tmp_path / "data-cpu.md").read_text()
    assert "| wds | 2 |" in md and "workers to feed 100 img/s" in md and "img/s per worker" in capsys.readouterr().out


def test_bench_data_refuses_what_it_cannot_measure(tmp_path):
    for extra, needle in ((["--data-formats", "lmdb"], "unknown --data-formats"),
                          (["--data-images", "3", "--data-batch", "4"], "--data-images 3 must be >= --data-batch 4"),
                          (["--data-size", "64"], "--data-size is WxH"),
                          (["--data-cfg", str(tmp_path / "none.yaml")], "--data-cfg .* does not exist")):
        with pytest.raises(BenchError, match=needle):
            bench_main(["--data", "--out", str(tmp_path), *extra])
