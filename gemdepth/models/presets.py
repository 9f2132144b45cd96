"""Named model configs (mirrored as YAML in ``configs/model/``) and config resolution.

``resolve_model_config`` turns what a user passes — a preset name, a YAML path or a dict — into
a config dict for :func:`~gemdepth.models.model.build_model`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gemdepth.models.hosts import HEAD_DEFAULTS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


def _head(size: str, **extra: Any) -> dict[str, Any]:
    return {**copy.deepcopy(HEAD_DEFAULTS[size]), "num_frames": 32, "use_bn": False, "use_clstoken": False, **extra}


def _gemdepth_plugins(size: str) -> list[dict[str, Any]]:
    # Official GemDepth (ViT-L): num_heads=32 for both plug-ins (GEM blocks num_heads/2, ASTT
    # spatial num_heads, temporal 4·num_heads), two ASTT block pairs. Smaller sizes keep the
    # plug-ins' defaults (num_heads = dim // 32, the same per-head widths).
    if size == "vitl":
        return [{"name": "gem", "num_heads": 32}, {"name": "astt", "num_heads": 32}]
    return [{"name": "gem"}, {"name": "astt"}]


def _preset(host: str, size: str, plugins: list[dict[str, Any]] | None = None, **head: Any) -> dict[str, Any]:
    return {"host": host, "encoder": size, "head": _head(size, **head), "plugins": plugins or []}


# Metric Video Depth Anything: the same network as VDA, its output read as depth in metres (the
# official windowing then skips the per-window scale/shift fit). Metric Depth Anything V2: the
# head ends in a sigmoid scaled by max_depth (20 m indoor / Hypersim, 80 m outdoor / Virtual KITTI 2).
METRIC_MAX_DEPTH = {"hypersim": 20.0, "vkitti": 80.0}


PRESETS: dict[str, dict[str, Any]] = {
    "dav2-vits": _preset("dav2", "vits"),
    "dav2-vitb": _preset("dav2", "vitb"),
    "dav2-vitl": _preset("dav2", "vitl"),
    "vda-vits": _preset("vda", "vits"),
    "vda-vitb": _preset("vda", "vitb"),
    "vda-vitl": _preset("vda", "vitl"),
    "gemdepth-vda-vitl": _preset("vda", "vitl", _gemdepth_plugins("vitl")),
    "gemdepth-dav2-vitl": _preset("dav2", "vitl", _gemdepth_plugins("vitl")),
    "gemdepth-vda-vits": _preset("vda", "vits", _gemdepth_plugins("vits")),
    "gemdepth-dav2-vits": _preset("dav2", "vits", _gemdepth_plugins("vits")),
    **{f"vda-{size}-metric": _preset("vda", size, metric=True) for size in ("vits", "vitb", "vitl")},
    **{
        f"dav2-{size}-{data}-metric": _preset("dav2", size, max_depth=depth)
        for size in ("vits", "vitb", "vitl")
        for data, depth in METRIC_MAX_DEPTH.items()
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """A fresh copy of a named model config."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a model config YAML (a mapping with host/encoder/head/plugins)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"model config {path} must hold a mapping (host, encoder, head, plugins), got {type(data).__name__}"
        )
    return dict(data)


def resolve_model_config(spec: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Preset name, YAML path or dict → config dict (a copy; not yet normalised)."""
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        return load_config_file(spec)
    if isinstance(spec, str):
        if spec in PRESETS:
            return get_preset(spec)
        if Path(spec).is_file():
            return load_config_file(spec)
        raise ValueError(f"{spec!r} is neither a model preset ({', '.join(PRESETS)}) nor a YAML file")
    raise TypeError(f"model config must be a preset name, a YAML path or a dict, got {type(spec).__name__}")
