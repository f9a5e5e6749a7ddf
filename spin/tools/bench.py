"""Throughput, memory and size of spin's models against timm's, in one process.

For one preset the models are measured interleaved (ConvMixer presets: timm's ConvMixer as users
get it and on channels_last, spin with timm's block, spin vanilla, WS and WFWS; the DeiT presets:
timm's deit_small_patch16_224 and spin's WS and WFWS DeiT at the same size; and a GEMM of the
token-mixing matmul's shape as the machine's reference rate), each over warm-up rounds and then
``repeats`` rounds; the medians are reported. A train step is forward, cross-entropy, backward
and an AdamW step; inference is a forward under ``torch.inference_mode``. Results are written
(atomically, only after a preset finished) to ``--out``: ~/.cache/spin/bench unless given; the
committed results live in bench/results.

``--data`` measures the input pipeline instead: the images a DataLoader worker decodes and augments
for training per second of its CPU time, at 224 px with the published augmentation (timm's
RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, then mixup/cutmix on each batch as the train
loop does), from JPEGs the bench writes (ImageNet-like 400x350), read as an image folder and as
WebDataset shards, with 1 and 2 workers; wall-clock images/s beside it; and how many workers a GPU
at timm's ConvMixer training throughput needs (GPU img/s / img/s per worker).
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os
import platform
import resource
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
DATA_FORMATS = ("folder", "wds")
# timm's published training throughput of its ConvMixer-768/32 (224 px, batch 96, AMP, channels_last,
# one RTX 3090): results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv of huggingface/pytorch-image-models.
TIMM_CONVMIXER_TRAIN_IMG_S = 187.17
TIMM_CONVMIXER_SOURCE = ("timm convmixer_768_32 training, RTX 3090, AMP, channels_last "
                         "(pytorch-image-models results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv)")


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


def _bench_images(root: str, n: int, size: tuple[int, int], classes: int, shards: int, seed: int) -> float:
    """``n`` JPEGs of ``size`` (w, h), smooth colour fields plus grain at quality 90, which at
    400x350 come to ~100 KB, ImageNet's bytes per image (decoding costs per pixel and per byte), in
    ROOT/folder/train/<class>/ (val/ with the same, empty, class folders: the folder format
    checks them) and the same files as ``shards`` WebDataset shards in ROOT/wds. Returns their
    mean size in KB."""
    import numpy as np
    from PIL import Image

    from ..data.shards import write_shards

    rng = np.random.default_rng(seed)
    w, h = size
    files = []
    for i in range(n):
        label = i % classes
        base = Image.fromarray((rng.random((max(h // 4, 1), max(w // 4, 1), 3)) * 255).astype(np.uint8))
        pixels = np.asarray(base.resize((w, h), Image.BICUBIC), dtype=np.float32) + rng.normal(0, 20, (h, w, 3))
        folder = os.path.join(root, "folder", "train", f"c{label:03d}")
        os.makedirs(folder, exist_ok=True)
        os.makedirs(os.path.join(root, "folder", "val", f"c{label:03d}"), exist_ok=True)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        files.append((path, label))

    def samples():
        for path, label in files:
            with open(path, "rb") as f:
                yield f.read(), "jpg", label

    write_shards(os.path.join(root, "wds"), "train", samples(), -(-n // shards), "bench")
    return sum(os.path.getsize(p) for p, _ in files) / n / 1024


def _cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def data_benchmark(images: int = 200, size: tuple[int, int] = (400, 350), batch: int = 32,
                   workers=(1, 2), formats=DATA_FORMATS, warmup: int = 1, repeats: int = 3, classes: int = 10,
                   cfg_file: str = "", gpu_img_s: float = TIMM_CONVMIXER_TRAIN_IMG_S, seed: int = 0) -> dict:
    """Training images per second of spin's loader per format and worker count (see the module
    docstring), through the trainer's own build_dataset, build_loader and build_mixup. Each pass
    starts and ends its workers, as an epoch does; their CPU time (the rusage of the children
    reaped) gives images per worker CPU second: what one worker delivers on a core of its own,
    whatever else the machine runs. Wall-clock images/s is reported beside it."""
    from ..config import load_config
    from ..data import build_dataset, build_loader, set_epoch
    from ..engine.trainer import build_mixup

    root = tempfile.mkdtemp(prefix="spin-bench-data-")
    runs = []
    try:
        kb = _bench_images(root, images, size, classes, 2 * max(workers), seed)
        for fmt in formats:
            for w in workers:
                cfg = load_config([cfg_file] if cfg_file else [], [
                    "TRAIN.DATASET", "folder" if fmt == "folder" else "wds/bench",
                    "DATA.PATH_TO_DATA_DIR", os.path.join(root, fmt), "DATA.TRAIN_CROP_SIZE", "224",
                    "DATA_LOADER.NUM_WORKERS", str(w), "DATA_LOADER.PIN_MEMORY", "False",
                    "MODEL.NUM_CLASSES", str(classes), "RNG_SEED", str(seed)]
                    + ([] if cfg_file else ["AUG.ENABLE", "True", "MIXUP.ENABLE", "True"]))
                loader = build_loader(cfg, build_dataset(cfg, "train"), True, batch)
                mixup = build_mixup(cfg, classes)
                walls, per_cpu, main_cpu = [], [], []
                for r in range(warmup + repeats):
                    set_epoch(loader, r, seed + r)
                    seen = 0
                    start, kids, me = time.perf_counter(), _cpu_seconds(resource.RUSAGE_CHILDREN), \
                        _cpu_seconds(resource.RUSAGE_SELF)
                    for x, y, _ in loader:
                        if mixup is not None:  # as the train loop: an even batch, mixed in the main process
                            even = x.shape[0] - x.shape[0] % 2
                            x, y = mixup(x[:even], y[:even])
                        seen += x.shape[0]
                    if r >= warmup:  # the pass ended its workers: their CPU time is in RUSAGE_CHILDREN
                        walls.append(seen / (time.perf_counter() - start))
                        per_cpu.append(seen / max(_cpu_seconds(resource.RUSAGE_CHILDREN) - kids, 1e-9))
                        main_cpu.append((_cpu_seconds(resource.RUSAGE_SELF) - me) / seen * 1e3)
                runs.append({"format": fmt, "workers": w, "img_s": statistics.median(walls),
                             "img_s_per_worker": statistics.median(per_cpu),
                             "main_cpu_ms_per_img": statistics.median(main_cpu)})
        a, m = cfg.AUG, cfg.MIXUP
        config = dict(images=images, image_size=list(size), jpeg_kb=kb, crop=224, batch=batch, workers=list(workers),
                      formats=list(formats), warmup=warmup, repeats=repeats, aa=a.AA_TYPE if a.ENABLE else "",
                      re_prob=a.RE_PROB if a.ENABLE else 0.0, mixup=m.ALPHA if m.ENABLE else 0.0,
                      cutmix=m.CUTMIX_ALPHA if m.ENABLE else 0.0, cfg=cfg_file)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = {f: statistics.median(r["img_s_per_worker"] for r in runs if r["format"] == f) for f in formats}
    return {"kind": "data", "config": config, "runs": runs,
            "gpu": {"img_s": gpu_img_s, "source": TIMM_CONVMIXER_SOURCE if gpu_img_s == TIMM_CONVMIXER_TRAIN_IMG_S
                    else "--gpu-img-s", "img_s_per_worker": rate,
                    "workers_needed": {f: math.ceil(gpu_img_s / v) for f, v in rate.items()}},
            "machine": machine_info(torch.device("cpu"))}


def data_markdown(result: dict) -> str:
    c, g = result["config"], result["gpu"]
    aug = (f"RandAugment {c['aa'] or 'off'}, random erasing {c['re_prob']}, mixup {c['mixup']} / cutmix "
           f"{c['cutmix']}")
    lines = [f"**training input pipeline**: {c['images']} JPEGs {c['image_size'][0]}x{c['image_size'][1]} "
             f"({c['jpeg_kb']:.0f} KB each), crop {c['crop']}, batch {c['batch']}, {aug} — "
             f"{result['machine']['device']}, torch {result['machine']['torch']}", "",
             "| format | workers | img/s (wall clock) | img/s per worker (per worker CPU second) | "
             "main process CPU ms/img |", "|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['workers']} | {r['img_s']:.1f} | {r['img_s_per_worker']:.1f} | "
              f"{r['main_cpu_ms_per_img']:.2f} |" for r in result["runs"]]
    need = ", ".join(f"{f} {n} ({g['img_s_per_worker'][f]:.0f} img/s each)" for f, n in g["workers_needed"].items())
    lines += ["", f"workers to feed {g['img_s']:.0f} img/s ({g['source']}) = GPU img/s / img/s per worker, "
                  f"rounded up: {need}"]
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
    d = p.add_argument_group("input pipeline (--data)")
    d.add_argument("--data", action="store_true",
                   help="measure training images/s per loader worker (folder and WebDataset) instead of the models")
    d.add_argument("--data-images", type=int, default=200, help="JPEGs the bench writes")
    d.add_argument("--data-size", default="400x350", help="their size, WxH (ImageNet's mean is about 400x350)")
    d.add_argument("--data-batch", type=int, default=32)
    d.add_argument("--data-workers", default="1,2", help="comma list of DATA_LOADER.NUM_WORKERS to measure")
    d.add_argument("--data-formats", default=",".join(DATA_FORMATS), help=f"comma list of {', '.join(DATA_FORMATS)}")
    d.add_argument("--data-cfg", default="", help="take the augmentation from this config (e.g. "
                                                  "configs/WS-ConvMixer.yaml); default: spin's, with AUG and MIXUP on")
    d.add_argument("--gpu-img-s", type=float, default=TIMM_CONVMIXER_TRAIN_IMG_S,
                   help="GPU training img/s to feed (default: timm's published ConvMixer-768/32 on an RTX 3090)")
    args = p.parse_args(argv)
    if args.data:
        return [_data_main(args)]
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


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BenchError(f"{flag} takes positive integers, got {text!r}")
    return values


def _data_main(args) -> dict:
    formats = [x.strip() for x in args.data_formats.split(",") if x.strip()]
    if not formats or set(formats) - set(DATA_FORMATS):
        raise BenchError(f"unknown --data-formats {args.data_formats!r}; allowed: {', '.join(DATA_FORMATS)}")
    size = _ints(args.data_size, "--data-size")
    if len(size) != 2:
        raise BenchError(f"--data-size is WxH, got {args.data_size!r}")
    workers = _ints(args.data_workers, "--data-workers")
    images, batch = args.data_images, args.data_batch
    if batch < 1 or images < max(batch, 2 * max(workers)):
        raise BenchError(f"--data-images {images} must be >= --data-batch {batch} and >= 2 x the most workers "
                         f"(the WebDataset shards: two per worker)")
    if args.warmup < 0 or args.repeats < 1:
        raise BenchError(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}")
    if args.data_cfg and not os.path.isfile(args.data_cfg):
        raise BenchError(f"--data-cfg {args.data_cfg!r} does not exist; give a config file")
    check_folder(args.out, "--out")
    res = data_benchmark(images, tuple(size), batch, workers, formats, args.warmup, args.repeats,
                         cfg_file=args.data_cfg, gpu_img_s=args.gpu_img_s)
    text = data_markdown(res)
    print(text + "\n", flush=True)
    _write(os.path.join(args.out, "data-cpu.json"), json.dumps(res, indent=1))
    _write(os.path.join(args.out, "data-cpu.md"), text + "\n")
    print(f"results in {args.out}")
    return res


if __name__ == "__main__":
    main()
