"""Model statistics: the row SPIN's README uses (C/D/P/K or the family's architecture, sharing,
fusion, rate, distribution, mapping, scope) plus parameters, unique parameters, GMACs per image
and fp32 size, for every model family."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import check_cfg
from ..models import build_model, family, family_of
from ..models.factory import relax_from_cfg
from ..share_transform import sharing_of, unique_parameters
from ..sharing import DEFAULT_SCOPES

COLUMNS = ["name", "model", "C/D/P/K", "arch", "sharing", "fusion", "relax", "rate", "distribution", "mapping",
           "scope", "params", "unique params", "GMACs", "fp32 MB"]


def arch_string(cfg) -> tuple[str, str]:
    """(column, value): ConvMixer's C/D/P/K as SPIN's README writes it, else a compact arch."""
    return family_of(cfg).arch(cfg)


def count_macs(model: torch.nn.Module, crop: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one image's forward (convolutions and the classifier)."""
    model.eval()
    x = torch.zeros(1, in_chans, crop, crop, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2  # the counter reports 2 FLOPs per multiply-add


def describe(cfg, name: str = "") -> dict:
    """One stats row for a config. Models are built on the meta device: no memory, no compute;
    WFWS is measured as its export (the fusion's element-wise ops are not multiply-adds)."""
    check_cfg(cfg, "stats")
    with torch.device("meta"):
        model = build_model(cfg)
    plan, fusion = sharing_of(model)
    ws = cfg.WEIGHT_SHARE
    relax = relax_from_cfg(cfg)["relax"]
    params = sum(p.numel() for p in model.parameters())
    unique = unique_parameters(model)
    shared = plan is not None and plan.is_shared
    dist = str(ws.SHARING_DISTRIBUTION)
    if plan and dist.lower() != "uniform":  # the sizes a named ramp gives are not obvious from its name
        dist = f"{dist} {list(plan.group_sizes)}"
    mapping = str(ws.SHARING_MAPPING) + (f" (seed {ws.SEED})" if str(ws.SHARING_MAPPING) == "random" else "")
    scope = "+".join(plan.scope) if plan and plan.scope else DEFAULT_SCOPES[family(cfg)]
    col, arch = arch_string(cfg)
    return {
        "name": name,
        "model": cfg.MODEL.MODEL_NAME,
        col: arch,
        "sharing": "yes" if shared else "no",
        "fusion": fusion or "no",
        "relax": (f"{relax} r{ws.RELAX_RANK}" if relax == "lora" else relax or "") if shared else "",
        "rate": f"{plan.depth / plan.num_sets:g}" if shared else "-",
        "distribution": dist if shared else "-",
        "mapping": mapping if shared else "-",
        "scope": scope if shared else "-",
        "params": params,
        "unique params": unique,
        "GMACs": count_macs(model, cfg.DATA.TEST_CROP_SIZE, cfg.DATA.INPUT_CHANNEL_NUM[0]) / 1e9,
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
    if len({r.get("model") for r in rows}) <= 1:  # one family: the arch column says enough
        cols = [c for c in cols if c != "model"]
    cols += [k for r in rows for k in r if k not in cols and k not in COLUMNS]
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols)] + [fmt.format(*row) for row in cells])
