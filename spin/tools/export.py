"""Deployable artifacts of a trained model (``spin export``): ONNX and ``torch.export`` (.pt2).

A WFWS checkpoint is fused first (its WS export). The artifact stores each shared tensor once: the
model's registered parameters are the unique ones (a WS set is one Parameter that every layer of its
set reads), and both exporters lift each registered parameter once (ONNX: one initializer referenced
by every layer of the set; pt2: one entry of the program's state dict), so the file is the
unique-parameter bytes plus the graph. The artifact carries the run's config (and class names) in
its metadata, so ``spin predict model.onnx img.png`` preprocesses as training did. Every export is
verified before it is kept: onnxruntime (CPU) or ``torch.export.load`` against the PyTorch model.

onnx and onnxruntime are the optional extra ``spin[deploy]`` (``pip install 'spin[deploy]'``).
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import zipfile

import torch
import torch.nn as nn

from ..engine import checkpoint as cu
from ..engine.runfolder import atomic_write
from ..errors import SpinError
from ..paths import check_file
from ..share_transform import fuse, sharing_of, unique_parameters

FORMATS = ("onnx", "pt2")
INSTALL = "pip install 'spin[deploy]' (or: pip install onnx onnxruntime onnxscript)"


class DeployError(SpinError, RuntimeError):
    """An export that cannot be made or does not verify; the message says why."""


def _require_onnx():
    try:
        import onnx  # noqa: F401  (imported to learn whether the extra is installed)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise DeployError(f"ONNX export and inference need the deploy extra: {INSTALL}") from None


def load_ws_model(checkpoint: str, cfg=None, opts=()) -> tuple[nn.Module, object, dict]:
    """The checkpoint's model in eval mode, fused to WS when it is WFWS; its (WS) cfg; the file."""
    model, cfg, ck = cu.build_model_from_checkpoint(checkpoint, opts, cfg)
    model.eval()
    if sharing_of(model)[1]:
        model = fuse(model).eval()
        cfg = cfg.clone()
        cfg.WEIGHT_SHARE.REDUCTION_FN = None
    return model, cfg, ck


def example_input(cfg, batch: int = 1) -> torch.Tensor:
    size = cfg.DATA.TEST_CROP_SIZE
    return torch.randn(batch, cfg.DATA.INPUT_CHANNEL_NUM[0], size, size, generator=torch.Generator().manual_seed(0))


def metadata(cfg, classes=()) -> dict[str, str]:
    """What an artifact carries besides the graph: the run's config and class names."""
    return {"spin_cfg": cfg.dump() if cfg is not None else "", "spin_classes": json.dumps(list(classes or []))}


def _failed(kind: str, e: Exception) -> DeployError:
    return DeployError(f"{kind} could not export the model ({type(e).__name__}: {str(e).splitlines()[0][:300]})")


def export_onnx(model: nn.Module, x: torch.Tensor, path: str, meta: dict, opset: int = 17,
                dynamic_batch: bool = False) -> None:
    """``model`` traced on input ``x`` as an ONNX file (shared Parameters: one initializer each)."""
    _require_onnx()
    import onnx

    buf = io.BytesIO()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (x,), buf, input_names=["image"], output_names=["logits"],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    except Exception as e:  # noqa: BLE001  (an export failure is the model's, reported as such)
        raise _failed("torch.onnx.export", e) from None
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


def export_pt2(model: nn.Module, x: torch.Tensor, path: str, meta: dict, dynamic_batch: bool = False) -> None:
    """``model`` as a torch.export program (.pt2) with ``meta`` as extra files."""
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    try:
        ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    except Exception as e:  # noqa: BLE001
        raise _failed("torch.export", e) from None
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={"spin_cfg.yaml": meta["spin_cfg"], "spin_classes.json": meta["spin_classes"]})
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def onnx_session(path: str):
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()
    # No busy-waiting between runs: its idle threads would steal the CPU from whatever runs next
    # (in spin bench, the PyTorch measurements interleaved with it).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def onnx_metadata(path: str) -> dict:
    _require_onnx()
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def stored_tensor_bytes(path: str, fmt: str) -> tuple[int, int]:
    """(bytes of the stored weights, number of stored weight tensors) of an artifact."""
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(path)
        arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
        return sum(a.nbytes for a in arrays), len(arrays)
    ep = torch.export.load(path)
    tensors = list(ep.state_dict.values()) + [t for t in ep.constants.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


def verify(model: nn.Module, cfg, path: str, fmt: str, dynamic_batch: bool) -> tuple[float, float]:
    """(max |logit difference|, max |logit|) of the artifact against the PyTorch model on random
    batches (batch 1, or 1 and 5)."""
    runner = None
    if fmt == "onnx":
        session = onnx_session(path)
        runner = lambda x: run_onnx(session, x)  # noqa: E731
    else:
        module = torch.export.load(path).module()
        runner = lambda x: module(x)  # noqa: E731
    worst = scale = 0.0
    for batch in ((1, 5) if dynamic_batch else (1,)):
        x = example_input(cfg, batch)
        with torch.no_grad():
            ref, got = model(x), runner(x)
        if got.shape != ref.shape:
            raise DeployError(f"the {fmt} artifact gives logits of shape {tuple(got.shape)}, the model "
                              f"{tuple(ref.shape)}")
        worst = max(worst, float((got - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return worst, scale


def export_checkpoint(checkpoint: str, fmt: str, out: str = "", cfg=None, opts=(), opset: int = 17,
                      dynamic_batch: bool = False, overwrite: bool = False, tolerance: float = 1e-4) -> dict:
    """Export ``checkpoint`` as ``fmt`` to ``out``, verify it (max |logit difference| <= ``tolerance``
    x max(1, max |logit|)), and report sizes and the logit gap."""
    if fmt not in FORMATS:
        raise DeployError(f"unknown --format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    if not 7 <= opset <= 23:
        raise DeployError(f"--opset must be in 7..23, got {opset}")
    out = out or os.path.splitext(checkpoint)[0] + "." + fmt
    check_file(out, "--out", overwrite, inputs=[checkpoint], suffix="." + fmt)  # spin predict reads the suffix
    model, cfg, ck = load_ws_model(checkpoint, cfg, opts)
    classes = ck.get("classes") or []
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_export_", suffix="." + fmt, dir=folder)
    os.close(fd)
    try:
        # A dynamic batch is traced at 2: a size-1 dimension would be specialised to 1.
        x, meta = example_input(cfg, 2 if dynamic_batch else 1), metadata(cfg, classes)
        (export_onnx(model, x, tmp, meta, opset, dynamic_batch) if fmt == "onnx"
         else export_pt2(model, x, tmp, meta, dynamic_batch))
        diff, scale = verify(model, cfg, tmp, fmt, dynamic_batch)
        if not diff <= tolerance * max(1.0, scale):  # float32 rounding grows with the logits' size
            raise DeployError(f"the {fmt} artifact's logits differ from PyTorch's by {diff:.3g} (logits up to "
                              f"{scale:.3g}; allowed {tolerance} x max(1, that)); nothing was written")
        stored, n_tensors = stored_tensor_bytes(tmp, fmt)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    params = sum(p.numel() for p in model.parameters())
    return {"output": out, "format": fmt, "params": params, "unique_params": unique_parameters(model),
            "unique_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
            "stored_bytes": stored, "stored_tensors": n_tensors, "file_bytes": os.path.getsize(out),
            "max_abs_diff": diff, "logit_scale": scale, "batches": [1, 5] if dynamic_batch else [1]}


def _static_hw(shape) -> "tuple[int, int] | None":
    """(H, W) of an NCHW input shape when both are fixed numbers, else None."""
    try:
        h, w = (int(d) for d in list(shape)[-2:])
    except (TypeError, ValueError):  # symbolic (dynamic) sizes
        return None
    return h, w


def load_artifact(path: str):
    """(logits function, config YAML, class names, fixed (H, W) input size or None) of an
    exported .onnx / .pt2 file."""
    if not os.path.isfile(path):
        raise DeployError(f"artifact {path!r} does not exist")
    try:
        if path.lower().endswith(".onnx"):
            meta, session = onnx_metadata(path), onnx_session(path)
            return ((lambda x: run_onnx(session, x)), meta.get("spin_cfg"), json.loads(meta.get("spin_classes", "[]")),
                    _static_hw(session.get_inputs()[0].shape))
        if not zipfile.is_zipfile(path):  # torch.export.load would log a traceback before raising
            raise DeployError(f"{path!r} is not a .pt2 archive (not a zip file); export it again with spin export")
        files = {"spin_cfg.yaml": "", "spin_classes.json": ""}
        logger = logging.getLogger("torch.export")
        level = logger.level
        logger.setLevel(logging.ERROR)  # its warning (with a traceback) repeats the error we raise
        try:
            program = torch.export.load(path, extra_files=files)
        finally:
            logger.setLevel(level)
        user = set(program.graph_signature.user_inputs)
        shapes = [n.meta["val"].shape for n in program.graph.nodes
                  if n.op == "placeholder" and n.name in user and hasattr(n.meta.get("val"), "shape")]
        return (program.module(), files["spin_cfg.yaml"] or None, json.loads(files["spin_classes.json"] or "[]"),
                _static_hw(shapes[0]) if shapes else None)
    except DeployError:
        raise
    except Exception as e:  # noqa: BLE001  (a corrupt or foreign file)
        raise DeployError(f"cannot read {path!r} as a spin export ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); export it again with spin export") from None
