"""Helpers shared by the official-weights tests: the parity measure and key inventories."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: the fixtures' README tolerance measure."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def official_key_state(path: Path) -> dict[str, torch.Tensor]:
    """A meta-device state dict with the names and shapes of a ``keys/*.txt`` inventory."""
    state = {}
    for line in path.read_text().splitlines():
        name, shape, _dtype = line.split("\t")
        state[name] = torch.empty(json.loads(shape), device="meta")
    return state
