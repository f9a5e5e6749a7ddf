"""A model family, described once, next to its model: :func:`register_family` takes one
:class:`Family` and makes it known to every layer that needs it — the config schema (its section
and choices), ``MODEL.MODEL_NAME`` (its aliases), the sharing transform (its named scope parts and
default scope, by model class), the config → keywords step, the config check and ``spin stats``.
Adding a family is one file: its model, its named builders and one ``register_family(Family(...))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch.nn as nn
from yacs.config import CfgNode

from ..config.defaults import add_section
from ..share_transform import register_family as register_classes
from ..sharing import register_scopes


@dataclass(frozen=True)
class Family:
    name: str  # the scope vocabulary's key: "convmixer", "vit", ...
    section: str  # its config section: CONVMIXER, VIT, ...
    model_names: tuple[str, ...]  # MODEL.MODEL_NAME values that pick it (registry builder names pick it too)
    build: Callable[..., nn.Module]  # architecture + plan keywords -> model
    kwargs: Callable[[CfgNode], dict]  # config -> the architecture keywords of ``build``
    arch: Callable[[CfgNode], tuple[str, str]]  # config -> (stats column, value)
    parts: dict  # named scope part -> block-relative glob patterns
    default_scope: str  # the scope a plan without SCOPE shares
    defaults: dict  # the section's keys and default values
    classes: tuple[type, ...] = ()  # its model classes (spin.share finds the parts by class)
    choices: dict = field(default_factory=dict)  # "SECTION.KEY" -> allowed values
    check: Callable[[CfgNode], list[str]] = lambda cfg: []  # its own problems, each with the fix
    width_key: str = ""  # the section key of its width (checked >= 1)
    # A hierarchical family: config -> [(stack path, depth)], one block stack per stage, each
    # shared within itself by its own plan (WEIGHT_SHARE's keys applied to every stage). None:
    # one stack, SECTION.DEPTH blocks deep.
    stacks: Optional[Callable[[CfgNode], list[tuple[str, int]]]] = None
    # (state_dict, model) -> the state dict in the model's own state_dict() layout (other layouts
    # the family's checkpoints come in); None: files are in that layout already
    checkpoint_filter: Optional[Callable[[dict, nn.Module], dict]] = None


FAMILIES: dict[str, Family] = {}
MODEL_NAMES: dict[str, str] = {}  # MODEL.MODEL_NAME alias -> family name


def family_of_model(model: nn.Module) -> Optional[Family]:
    """The registered family whose classes ``model`` is an instance of, else None."""
    return next((f for f in FAMILIES.values() if isinstance(model, f.classes)), None)


def register_family(family: Family) -> Family:
    """Make ``family`` known everywhere; its name, section and aliases must be new."""
    from ..config import get_cfg
    from ..config.defaults import MODEL_FAMILIES

    taken = [f"family name {family.name!r}"] if family.name in FAMILIES else []
    taken += [f"config section {family.section}"] if family.section in get_cfg() else []
    taken += [f"MODEL.MODEL_NAME {a!r}" for a in family.model_names if a in MODEL_FAMILIES]
    if taken:
        raise ValueError(f"register_family({family.name!r}): {', '.join(taken)} already taken; choose new ones")
    FAMILIES[family.name] = family
    for alias in family.model_names:
        MODEL_NAMES[alias] = family.name
    register_scopes(family.name, family.parts, family.default_scope)
    for cls in family.classes:
        register_classes(cls, family.name)
    add_section(family.section, family.defaults, family.choices, {a: family.name for a in family.model_names})
    return family
