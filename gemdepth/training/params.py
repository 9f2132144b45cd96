"""Freezing, parameter groups and the learning-rate schedule, all driven by module-name patterns.

Patterns are shell-style globs (``fnmatch``) on dotted names inside the model, e.g.
``encoder.*`` or ``plugins.gem.*``; a pattern without wildcards also covers everything below
that module (``plugins.gem`` ≡ ``plugins.gem.*``). Because groups come from names, a new
plug-in under ``plugins.`` needs no change here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from torch import nn

__all__ = [
    "matches",
    "freeze_parameters",
    "frozen_modules",
    "build_param_groups",
    "lr_factor",
]


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether the dotted ``name`` falls under any glob in ``patterns``."""
    for pattern in patterns:
        if fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*"):
            return True
    return False


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters matching ``patterns``; return their names.

    A pattern that matches no parameter raises (a typo would otherwise silently train the
    module one meant to freeze).
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(matches(n, [pattern]) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter (top-level modules: {tops})")
    frozen = []
    for name, param in model.named_parameters():
        if matches(name, patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def frozen_modules(model: nn.Module, frozen: Iterable[str]) -> list[str]:
    """Top-most modules all of whose (≥ 1) parameters are in ``frozen``.

    These are the modules kept in eval mode while training (their dropout, batch-norm and
    other train-time behaviour off), so the frozen part computes exactly what it will at
    inference.
    """
    frozen_set = set(frozen)
    out: list[str] = []
    for name, module in model.named_modules():
        if name == "":
            continue
        if any(name.startswith(parent + ".") for parent in out):
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if params and all(p in frozen_set for p in params):
            out.append(name)
    return out


def build_param_groups(
    model: nn.Module,
    new_patterns: Sequence[str],
    lr_new: float,
    lr_pretrained: float,
    weight_decay: float,
) -> list[dict]:
    """AdamW parameter groups ``new`` (matching ``new_patterns``) and ``pretrained`` (the rest).

    Only parameters with ``requires_grad`` enter; empty groups are dropped. Each group carries
    a ``name`` (used for the per-group learning-rate log).
    """
    new, old = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (new if matches(name, new_patterns) else old).append(param)
    groups = []
    if new:
        groups.append({"name": "new", "params": new, "lr": lr_new, "weight_decay": weight_decay})
    if old:
        groups.append({"name": "pretrained", "params": old, "lr": lr_pretrained, "weight_decay": weight_decay})
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen (check `freeze`)")
    return groups


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    decay: str = "cosine",
    min_ratio: float = 0.0,
    poly_power: float = 0.9,
) -> float:
    """Multiplier of the base learning rate at optimiser ``step`` (0-based).

    Linear warm-up from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then ``decay``
    down to ``min_ratio`` at ``total_steps``: ``cosine``, ``linear`` (the official OneCycle
    shape), ``poly`` (``(1-p)^poly_power``) or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay == "linear":
        shape = 1.0 - progress
    elif decay == "poly":
        shape = (1.0 - progress) ** poly_power
    else:
        raise ValueError(f"decay must be 'cosine', 'linear', 'poly' or 'constant', got {decay!r}")
    return min_ratio + (1.0 - min_ratio) * shape
