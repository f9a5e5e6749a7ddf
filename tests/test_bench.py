"""The benchmark runs on a tiny config and writes valid output (no timing assertions)."""
import json

from spin.cli import main


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
