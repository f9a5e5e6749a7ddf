"""Export a trained WFWS checkpoint as a plain WS checkpoint (upstream's fuse_weights.py step),
for every model family.

The D stored sets are replaced by the N fused ones, the fusion coefficients are dropped, and the
stored cfg gets REDUCTION_FN None, so the file reloads with the WS config. Only model weights are
written: each shared tensor once, no optimizer state.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from ..config import check_cfg
from ..engine import checkpoint as cu
from ..engine.runfolder import atomic_write
from ..identity import identity
from ..models.factory import fusion_from_cfg
from ..paths import check_file
from ..share_transform import fuse


def _state_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def default_output(checkpoint: str, output_dir: str) -> str:
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return os.path.join(output_dir or ".", f"{stem}-fused.pyth")


def fuse_checkpoint(cfg, checkpoint: str, output: str, safetensors: bool = False,
                    overwrite: bool = False) -> dict:
    """Load ``checkpoint`` into the WFWS model of ``cfg``, fuse, write ``output`` (and
    ``output`` with .safetensors). Returns sizes and paths."""
    check_cfg(cfg, "fuse")
    if not fusion_from_cfg(cfg):
        raise cu.CheckpointError(
            "spin fuse needs the WFWS config the checkpoint was trained with (WEIGHT_SHARE.ENABLE True "
            "and WEIGHT_SHARE.REDUCTION_FN set, e.g. configs/WFWS-ConvMixer.yaml)")
    st_path = os.path.splitext(output)[0] + ".safetensors" if safetensors else None
    for path, name in ((output, "--output"), (st_path, "the .safetensors beside --output")):
        if path:
            check_file(path, name, overwrite, inputs=[checkpoint])
    bytes_before = os.path.getsize(checkpoint)
    wfws, _, ck = cu.build_model_from_checkpoint(checkpoint, cfg=cfg)
    wfws.eval()
    ws = fuse(wfws)
    ws_cfg = cfg.clone()
    ws_cfg.WEIGHT_SHARE.REDUCTION_FN = None
    ws_cfg.TRAIN.CHECKPOINT_FILE_PATH = ""
    ws_cfg.TRAIN.CHECKPOINT_EPOCH_RESET = False
    state = {k: v.contiguous() for k, v in ws.state_dict().items()}
    extra = {k: ck[k] for k in ("classes",) if k in ck}
    extra["identity"] = identity(ws_cfg, ck.get("classes"))
    cu.atomic_save({"epoch": int(ck.get("epoch", 0)), "model_state": state, "cfg": ws_cfg.dump(),
                    **extra}, output)
    if st_path:
        from safetensors.torch import save

        blob = save(state, metadata={"cfg": ws_cfg.dump(), "identity": json.dumps(extra["identity"])})
        atomic_write(st_path, lambda f: f.write(blob))
    return {
        "input": checkpoint, "output": output, "safetensors": st_path,
        "params_before": sum(p.numel() for p in wfws.parameters()),
        "params_after": sum(p.numel() for p in ws.parameters()),
        "state_bytes_after": _state_bytes(state),
        "file_bytes_before": bytes_before, "file_bytes_after": os.path.getsize(output),
        "safetensors_bytes": os.path.getsize(st_path) if st_path else None,
    }


def load_safetensors_model(path: str, cfg=None):
    """Rebuild a model from an exported .safetensors file (its metadata holds the cfg)."""
    model, cfg, _ = cu.build_model_from_checkpoint(path, cfg=cfg)
    return model, cfg


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return str(n)
