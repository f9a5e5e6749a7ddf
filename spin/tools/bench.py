"""Throughput, memory and size of spin's models against timm's, in one process.

For one preset the models are measured interleaved (ConvMixer presets: timm's ConvMixer as users
get it and on channels_last, spin with timm's block, spin vanilla, WS and WFWS; the DeiT presets:
timm's deit_small_patch16_224 and spin's WS and WFWS DeiT at the same size; and a GEMM of the
token-mixing matmul's shape as the machine's reference rate), each over warm-up rounds and then
``repeats`` rounds; the medians are reported. A train step is forward, cross-entropy, backward
and an AdamW step; inference is a forward under ``torch.inference_mode``. Results are written
(atomically, only after a preset finished) to ``--out``: ~/.cache/spin/bench unless given; the
committed results live in bench/results.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..errors import SpinError
from ..models import SpinConvMixer, create_model
from ..paths import check_folder
from ..share_transform import unique_parameters
from ..sharing import build_plan
from .stats import count_macs

PRESETS = {
    # SPIN's ImageNet model at a small batch, and a CIFAR-size ConvMixer.
    "imagenet": dict(dim=768, depth=32, patch=14, kernel=3, image=224, batch=8, classes=1000),
    "cifar": dict(dim=256, depth=8, patch=2, kernel=5, image=32, batch=64, classes=10),
    "tiny": dict(dim=32, depth=4, patch=4, kernel=3, image=32, batch=4, classes=10),
    # DeiT-S at 224px; and a tiny ViT for tests.
    "deit": dict(family="vit", dim=384, depth=12, heads=6, patch=16, image=224, batch=8, classes=1000),
    "deit_tiny": dict(family="vit", dim=32, depth=4, heads=2, patch=8, image=32, batch=4, classes=10),
}
MODELS = ("timm", "timm_cl", "spin_timm_block", "spin_vanilla", "spin_ws", "spin_wfws")
VIT_MODELS = ("timm", "spin_ws", "spin_wfws")
REFERENCES = ("timm", "timm_cl")
DEFAULT_OUT = os.path.join(os.path.expanduser("~"), ".cache", "spin", "bench")


class BenchError(SpinError, ValueError):
    """A benchmark request that cannot run as given."""


class ChannelsLast(nn.Module):
    """timm's ConvMixer run on NHWC activations (what a tuned timm user would do)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def build_vit_models(dim, depth, heads, patch, image, classes, share_rate=2) -> dict[str, nn.Module]:
    """timm's DeiT-S at this size, and spin's WS / WFWS DeiT (attn+mlp shared) at the same size."""
    import timm

    common = dict(img_size=image, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                  num_classes=classes)
    return {"timm": timm.create_model("deit_small_patch16_224", pretrained=False, **common),
            "spin_ws": create_model("deit_small_patch16_224", share_rate=share_rate, **common),
            "spin_wfws": create_model("deit_small_patch16_224", share_rate=share_rate, fusion="mean", **common)}


def build_models(dim, depth, patch, kernel, classes, share_rate=2) -> dict[str, nn.Module]:
    from timm.models.convmixer import ConvMixer

    common = dict(dim=dim, depth=depth, patch_kernel=patch, kernel_size=kernel, act="relu",
                  num_classes=classes, drop_rate=0.0)
    def timm_model():
        return ConvMixer(dim=dim, depth=depth, kernel_size=kernel, patch_size=patch,
                         num_classes=classes, act_layer=nn.ReLU)

    return {
        "timm": timm_model(),
        "timm_cl": ChannelsLast(timm_model()),
        # timm's architecture (no residual around the pointwise half) in spin's implementation:
        # separates implementation speed from the SPIN block's extra residual add.
        "spin_timm_block": SpinConvMixer(**common, pointwise_residual=False),
        "spin_vanilla": SpinConvMixer(**common),
        "spin_ws": SpinConvMixer(**common, plan=build_plan(depth, share_rate=share_rate)),
        "spin_wfws": SpinConvMixer(**common, plan=build_plan(depth, share_rate=share_rate),
                                   fusion="mean"),
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device, iters: int) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def saved_activation_bytes(model, x, y) -> int:
    """Bytes autograd keeps for backward in one train forward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def benchmark(dim: int, depth: int, patch: int, image: int, batch: int, kernel: int = 0,
              classes: int = 1000, device: str = "cpu", amp: Optional[str] = None,
              channels_last: bool = False, warmup: int = 2, repeats: int = 5, iters: int = 2,
              models=MODELS, share_rate: int = 2, seed: int = 0, compile: bool = False,
              family: str = "convmixer", heads: int = 0, onnx: bool = False) -> dict:
    torch.manual_seed(seed)
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
    fmt = torch.channels_last if channels_last and family == "convmixer" else torch.contiguous_format
    every = (build_vit_models(dim, depth, heads, patch, image, classes, share_rate) if family == "vit"
             else build_models(dim, depth, patch, kernel, classes, share_rate))
    built = {k: v for k, v in every.items() if k in models}
    x = torch.randn(batch, 3, image, image, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=dev)
    tokens = (image // patch) ** 2
    a = torch.randn(batch * tokens, dim, device=dev, dtype=dtype or torch.float32)
    w = torch.randn(dim, dim, device=dev, dtype=dtype or torch.float32)
    gemm_flops = 2 * batch * tokens * dim * dim
    ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else (lambda: torch.autocast(dev.type, enabled=False))
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    result: dict = {"models": {}}
    sessions: dict = {}
    onnx_dir = tempfile.mkdtemp(prefix="spin-bench-onnx-") if onnx else None
    steps: dict[str, tuple[Callable, Callable]] = {}
    for name, m in built.items():
        m = m.to(dev).to(memory_format=fmt)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)  # as spin's trainer
        run = torch.compile(m) if compile else m

        def train_step(m=m, opt=opt, run=run):
            m.train()
            with ctx():
                loss = nn.functional.cross_entropy(run(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        def infer_step(m=m, run=run):
            m.eval()
            with torch.inference_mode(), ctx():
                run(x)

        steps[name] = (train_step, infer_step)
        train_step()  # materialises the optimizer state (and compiles the train graph)
        infer_step()
        # Fusion ops are not multiply-adds of the image: WFWS counts like WS.
        macs = count_macs(m, image)
        params = sum(p.numel() for p in m.parameters())
        result["models"][name] = {
            "params": params,
            "unique_params": unique_parameters(m) if not isinstance(m, ChannelsLast) else params,
            "param_bytes": sum(p.numel() * p.element_size() for p in m.parameters()),
            "optimizer_state_bytes": sum(t.numel() * t.element_size() for s in opt.state.values()
                                         for t in s.values() if torch.is_tensor(t)),
            "macs_per_image": macs,
            "train": [], "infer": [],
        }
        if dev.type == "cpu":
            result["models"][name]["activation_bytes"] = saved_activation_bytes(m, x, y)
        if onnx:  # the deployed model (WFWS fused) in onnxruntime on the CPU, same input
            sessions[name] = _onnx_session(m, x, onnx_dir)
            result["models"][name]["onnx_infer"] = []

    def gemm():
        torch.mm(a, w)

    gemm_times = []

    def onnx_step(session):
        session.run(None, {session.get_inputs()[0].name: x_cpu})

    x_cpu = x.detach().cpu().contiguous().numpy() if onnx else None
    for r in range(warmup + repeats):
        for name, (train_step, infer_step) in steps.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t_train = _timed(train_step, dev, iters)
            if dev.type == "cuda":
                result["models"][name]["peak_train_bytes"] = torch.cuda.max_memory_allocated(dev)
            t_infer = _timed(infer_step, dev, iters)
            if r >= warmup:
                result["models"][name]["train"].append(batch / t_train)
                result["models"][name]["infer"].append(batch / t_infer)
            if name in sessions:
                t_onnx = _timed(lambda s=sessions[name]: onnx_step(s), torch.device("cpu"), iters)
                if r >= warmup:
                    result["models"][name]["onnx_infer"].append(batch / t_onnx)
        t_gemm = _timed(gemm, dev, max(3, iters))
        if r >= warmup:
            gemm_times.append(t_gemm)

    gemm_gflops = gemm_flops / statistics.median(gemm_times) / 1e9
    for name, r in result["models"].items():
        r["train_img_s"] = statistics.median(r.pop("train"))
        r["infer_img_s"] = statistics.median(r.pop("infer"))
        if "onnx_infer" in r:
            r["onnx_infer_img_s"] = statistics.median(r.pop("onnx_infer"))
        r["infer_gflops"] = 2 * r["macs_per_image"] * r["infer_img_s"] / 1e9
        r["mfu_vs_gemm"] = r["infer_gflops"] / gemm_gflops
    m = result["models"]
    ratios = {}
    for mode in ("train_img_s", "infer_img_s"):
        for ref in REFERENCES:
            if ref in m:
                for name in ("spin_timm_block", "spin_vanilla", "spin_ws", "spin_wfws"):
                    if name in m:
                        ratios[f"{name}/{ref} {mode[:5]}"] = m[name][mode] / m[ref][mode]
        if "spin_ws" in m and "spin_wfws" in m:
            ratios[f"spin_wfws/spin_ws {mode[:5]}"] = m["spin_wfws"][mode] / m["spin_ws"][mode]
    for name, r in m.items():
        if "onnx_infer_img_s" in r:
            ratios[f"{name} onnxruntime/eager infer"] = r["onnx_infer_img_s"] / r["infer_img_s"]
    if onnx_dir:
        shutil.rmtree(onnx_dir, ignore_errors=True)
    result.update(
        config=dict(family=family, dim=dim, depth=depth, patch=patch, kernel=kernel, heads=heads,
                    image=image, batch=batch,
                    classes=classes, device=device, amp=amp, channels_last=channels_last,
                    warmup=warmup, repeats=repeats, iters=iters, share_rate=share_rate,
                    compile=compile, onnx=onnx),
        gemm_gflops=gemm_gflops, gemm_shape=[batch * tokens, dim, dim], ratios=ratios,
        machine=machine_info(dev))
    return result


def _onnx_session(model: nn.Module, x: torch.Tensor, folder: str):
    """An onnxruntime session of a copy of ``model`` as ``spin export`` writes it (WFWS fused)."""
    from .export import export_onnx, metadata, onnx_session
    from ..share_transform import fuse, sharing_of

    m = copy.deepcopy(model.model if isinstance(model, ChannelsLast) else model).cpu().eval()
    m = fuse(m) if sharing_of(m)[1] else m
    path = os.path.join(folder, f"{len(os.listdir(folder))}.onnx")
    export_onnx(m, x.detach().cpu().contiguous(), path, metadata(None))
    return onnx_session(path)


def machine_info(dev: torch.device) -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    if dev.type == "cuda":
        info["device"] = torch.cuda.get_device_name(dev)
    else:
        cpu = platform.processor()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["device"] = f"{cpu}, {os.cpu_count()} cores"
    return info


def markdown(result: dict) -> str:
    c = result["config"]
    arch = (f"DeiT dim {c['dim']}, depth {c['depth']}, heads {c['heads']}, patch {c['patch']}"
            if c.get("family") == "vit" else f"{c['dim']}/{c['depth']}/{c['patch']}/{c['kernel']}")
    head = (f"**{arch}**, {c['image']}px, batch {c['batch']}, "
            f"{c['device']}{', ' + c['amp'] if c['amp'] else ''}{', channels_last' if c['channels_last'] else ''}"
            f"{', torch.compile' if c.get('compile') else ''} "
            f"— {result['machine']['device']}, torch {result['machine']['torch']}; GEMM "
            f"{result['gemm_gflops']:.1f} GFLOP/s")
    onnx = any("onnx_infer_img_s" in r for r in result["models"].values())
    cols = ["model", "train img/s", "infer img/s"] + (["onnxruntime img/s"] if onnx else []) + [
        "infer GFLOP/s", "% of GEMM", "params", "unique params", "optimizer state MB",
        "activations MB" if c["device"] == "cpu" else "peak train MB"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["models"].items():
        mem = r.get("activation_bytes", r.get("peak_train_bytes", 0)) / 1e6
        ort = f" {r['onnx_infer_img_s']:.2f} |" if onnx else ""
        lines.append(f"| {name} | {r['train_img_s']:.2f} | {r['infer_img_s']:.2f} |{ort} {r['infer_gflops']:.1f} | "
                     f"{100 * r['mfu_vs_gemm']:.0f}% | {r['params']:,} | {r['unique_params']:,} | "
                     f"{r['optimizer_state_bytes'] / 1e6:.1f} | {mem:.1f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def _epoch_stats(run_dir: str) -> Optional[dict]:
    """The train_epoch json_stats of a run folder's stdout.log (the last one), or None."""
    path = os.path.join(run_dir, "stdout.log")
    if not os.path.exists(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            if "json_stats: " in line and '"train_epoch"' in line:
                found = json.loads(line.split("json_stats: ", 1)[1])
    return found


def gpu_check_report(out: str) -> str:
    """summary.md of a bench/gpu-check.sh run folder: the benchmark tables' key numbers, the
    training runs' img/s and peak memory (compile off / on), the DDP smoke run, step status."""
    lines = [f"# GPU check ({open(os.path.join(out, 'machine.txt')).read().strip()})", ""]
    steps = [l.split() for l in open(os.path.join(out, "steps.txt")) if l.strip()]
    lines += ["| step | exit | seconds |", "|---|---|---|"] + [f"| {n} | {rc} | {t} |" for n, rc, t in steps]
    lines += ["", "| preset | model | train img/s | infer img/s | % of GEMM | peak train MB |", "|---|---|---|---|---|---|"]
    ratios = []
    for path in sorted(glob.glob(os.path.join(out, "bench", "*.json"))):
        res = json.load(open(path))
        tag = os.path.splitext(os.path.basename(path))[0]
        for name, r in res["models"].items():
            mem = r.get("peak_train_bytes", r.get("activation_bytes", 0)) / 1e6
            lines.append(f"| {tag} | {name} | {r['train_img_s']:.1f} | {r['infer_img_s']:.1f} | "
                         f"{100 * r['mfu_vs_gemm']:.0f}% | {mem:.0f} |")
        ratios += [f"| {tag} | {k} | {v:.3f} |" for k, v in res["ratios"].items()
                   if k.startswith(("spin_ws/timm ", "spin_wfws/spin_ws"))]
    lines += ["", "| preset | ratio | value |", "|---|---|---|"] + ratios
    lines += ["", "| training run | img/s | peak memory GB | seconds |", "|---|---|---|---|"]
    for run in ("train_amp", "train_amp_compile", "ddp_nccl", "ddp_gloo"):
        st = _epoch_stats(os.path.join(out, run))
        if st is not None:
            lines.append(f"| {run} | {st['img_s']:.1f} | {st['mem']:.2f} | {st['time']:.1f} |")
    return "\n".join(lines)


def _write(path: str, text: str) -> None:
    from ..engine.runfolder import atomic_write

    atomic_write(path, lambda f: f.write(text.encode()))


def main(argv=None) -> list[dict]:
    """spin bench [--preset imagenet,cifar,deit] [--device cpu|cuda] [--amp bf16|fp16] ..."""
    from ..config import ArgumentParser

    p = ArgumentParser(prog="spin bench", description=__doc__)
    p.add_argument("--preset", default="imagenet,cifar", help=f"comma list of {', '.join(PRESETS)}")
    p.add_argument("--batch", type=int, default=0, help="override the preset's batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="autocast dtype (default: bf16 on CUDA, none on the CPU)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=2, help="steps per timed round")
    p.add_argument("--models", default="", help=f"comma list (default: all of the preset's; ConvMixer: "
                                                f"{', '.join(MODELS)}; DeiT: {', '.join(VIT_MODELS)})")
    p.add_argument("--compile", action="store_true", help="run every model under torch.compile")
    p.add_argument("--onnx", action="store_true", help="also onnxruntime (CPU) inference of each model as exported")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for JSON and markdown (the committed results: --out bench/results)")
    args = p.parse_args(argv)
    presets = [x.strip() for x in args.preset.split(",") if x.strip()]
    bad = [x for x in presets if x not in PRESETS]
    if bad or not presets:
        raise BenchError(f"unknown --preset {','.join(bad) or repr(args.preset)}; allowed: {', '.join(PRESETS)}")
    models = [x.strip() for x in args.models.split(",") if x.strip()]
    known = set(MODELS) | set(VIT_MODELS)
    if [x for x in models if x not in known]:
        raise BenchError(f"unknown --models {','.join(x for x in models if x not in known)}; allowed: "
                         f"{', '.join(MODELS)} (ConvMixer presets), {', '.join(VIT_MODELS)} (DeiT presets)")
    for name, value, low in (("--batch", args.batch, 0), ("--warmup", args.warmup, 0),
                             ("--repeats", args.repeats, 1), ("--iters", args.iters, 1)):
        if value < low:
            raise BenchError(f"{name} must be >= {low}, got {value}")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise BenchError("--device cuda but CUDA is not available here; use --device cpu")
    if not cuda and args.device != "cpu":
        raise BenchError(f"unknown --device {args.device!r}; allowed: cpu, cuda, cuda:N")
    check_folder(args.out, "--out")
    amp = args.amp or ("bf16" if cuda else None)
    cl = args.channels_last if args.channels_last is not None else cuda
    results = []
    for preset in presets:
        cfg = dict(PRESETS[preset])
        if args.batch:
            cfg["batch"] = args.batch
        family_models = VIT_MODELS if cfg.get("family") == "vit" else MODELS
        chosen = [m for m in (models or family_models) if m in family_models]
        if not chosen:
            raise BenchError(f"none of --models {args.models} runs in preset {preset}; its models: "
                             f"{', '.join(family_models)}")
        res = benchmark(**cfg, device=args.device, amp=amp, channels_last=cl, warmup=args.warmup,
                        repeats=args.repeats, iters=args.iters, models=chosen, compile=args.compile,
                        onnx=args.onnx)
        res["preset"] = preset
        results.append(res)
        text = markdown(res)
        print(text + "\n", flush=True)
        tag = (f"{preset}-{args.device.split(':')[0]}{'-compile' if args.compile else ''}"
               f"{'-onnx' if args.onnx else ''}")
        _write(os.path.join(args.out, f"{tag}.json"), json.dumps(res, indent=1))
        _write(os.path.join(args.out, f"{tag}.md"), text + "\n")
    print(f"results in {args.out}")
    return results


if __name__ == "__main__":
    main()
