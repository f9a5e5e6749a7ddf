"""Model statistics: the row SPIN's README uses (C/D/P/K, sharing, fusion, rate, distribution,
mapping) plus parameters, unique parameters, GMACs per image and fp32 size."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .fusion import parse_fusion
from .models import build_model

COLUMNS = ["name", "C/D/P/K", "sharing", "fusion", "rate", "distribution", "mapping", "scope",
           "params", "unique params", "GMACs", "fp32 MB"]


def count_macs(model: torch.nn.Module, crop: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one image's forward (convolutions and the classifier)."""
    model.eval()
    x = torch.zeros(1, in_chans, crop, crop, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2  # the counter reports 2 FLOPs per multiply-add


def describe(cfg, name: str = "") -> dict:
    """One stats row for a config. Models are built on the meta device: no memory, no compute."""
    c, ws = cfg.CONVMIXER, cfg.CONVMIXER.WEIGHT_SHARE
    with torch.device("meta"):
        model = build_model(cfg)
        export_cfg = cfg.clone()
        export_cfg.CONVMIXER.WEIGHT_SHARE.REDUCTION_FN = None  # WFWS is measured as its export
        exported = build_model(export_cfg) if model.fusion else model
    plan = model.plan
    params = sum(p.numel() for p in model.parameters())
    unique = sum(p.numel() for p in exported.parameters())
    shared = plan.is_shared
    custom_dist = str(ws.SHARING_DISTRIBUTION).lower() == "custom"
    dist = (f"custom {list(plan.group_sizes)}" if custom_dist else str(ws.SHARING_DISTRIBUTION))
    mapping = str(ws.SHARING_MAPPING) + (f" (seed {ws.SEED})" if str(ws.SHARING_MAPPING) == "random" else "")
    return {
        "name": name,
        "C/D/P/K": f"{c.CHANNEL}/{c.DEPTH}/{c.PATCH_KERNEL}/{c.KERNEL}",
        "sharing": "yes" if shared else "no",
        "fusion": (parse_fusion(ws.REDUCTION_FN) or "no") if ws.ENABLE else "no",
        "rate": f"{plan.depth / plan.num_sets:g}" if shared else "-",
        "distribution": dist if shared else "-",
        "mapping": mapping if shared else "-",
        "scope": "+".join(plan.scope) if shared else "-",
        "params": params,
        "unique params": unique,
        "GMACs": count_macs(exported, cfg.DATA.TEST_CROP_SIZE, cfg.DATA.INPUT_CHANNEL_NUM[0]) / 1e9,
        "fp32 MB": unique * 4 / 1e6,
    }


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if v >= 0.1 else f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    cols += [k for r in rows for k in r if k not in cols and k not in COLUMNS]
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols)] + [fmt.format(*row) for row in cells])
