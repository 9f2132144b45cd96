"""Loading weights into gemdepth models: official DAv2 / VDA / GemDepth files and our own checkpoints.

``load_model`` is the one entry point. Official files need a model config (preset name, YAML or
dict); the adapter is chosen from the file's keys. gemdepth checkpoints carry their config:
``.safetensors`` written by :func:`gemdepth.weights.convert.save_checkpoint` (metadata key
``gemdepth_config``, JSON) and Lightning ``.ckpt`` files (``hyper_parameters["model"]``).
Loading is strict; ``partial`` names explicit allow-lists of modules that may start fresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gemdepth.models.model import VideoDepthModel  # load_model's return type, resolvable at run time
from gemdepth.weights.common import (
    CheckpointError,
    KeyAdapter,
    identity_adapter,
    load_state_file,
    read_raw,
    unwrap_state,
)

log = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "gemdepth_config"
CKPT_HPARAMS_KEY = "hyper_parameters"
CKPT_MODEL_KEY = "model"

# Named allow-lists of model keys that may be missing from a checkpoint (they keep their init).
PARTIAL_ALLOW: dict[str, list[str]] = {
    "new-modules": [r"^plugins\."],  # VDA → GemDepth-VDA, DAv2 → GemDepth-DAv2
    "temporal-head": [r"^head\.motion_modules\."],  # DAv2 → VDA (motion modules start as identity)
}

__all__ = [
    "CheckpointError",
    "KeyAdapter",
    "PARTIAL_ALLOW",
    "adapter_for",
    "load_model",
    "load_state_file",
    "read_checkpoint",
]


def partial_patterns(partial: str | Sequence[str] | None) -> list[str]:
    """Regexes of the named allow-lists in ``partial`` (``None`` → strict, no pattern)."""
    if partial is None:
        return []
    names = [partial] if isinstance(partial, str) else list(partial)
    patterns: list[str] = []
    for name in names:
        if name not in PARTIAL_ALLOW:
            raise ValueError(f"unknown partial allow-list {name!r}; known: {', '.join(PARTIAL_ALLOW)}")
        patterns += PARTIAL_ALLOW[name]
    return patterns


def adapter_for(state: Mapping[str, Tensor], source: str = "checkpoint") -> KeyAdapter:
    """Pick the key adapter from the layout of ``state``."""
    keys = list(state)
    if any(k.startswith("camera_head.") for k in keys):
        from gemdepth.weights.gemdepth import gemdepth_adapter

        return gemdepth_adapter()
    if any(k.startswith("depth_head.") for k in keys):
        from gemdepth.weights.dav2 import dav2_adapter

        return dav2_adapter()
    if any(k.startswith("head.motion_modules.") for k in keys) and any(k.startswith("pretrained.") for k in keys):
        from gemdepth.weights.vda import vda_adapter

        return vda_adapter()
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("head.") for k in keys):
        return identity_adapter()
    raise CheckpointError(
        f"{source}: unrecognised key layout (first keys: {keys[:5]}); expected official Depth Anything V2 "
        f"(pretrained.*, depth_head.*), Video Depth Anything (pretrained.*, head.motion_modules.*), "
        f"GemDepth (… camera_head.*) or a gemdepth checkpoint (encoder.*, head.*)"
    )


def _strip_model_prefix(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """A Lightning state dict → the VideoDepthModel's keys (its attribute prefix removed)."""
    anchor = "encoder.patch_embed.proj.weight"
    prefixes = [k[: -len(anchor)] for k in state if k.endswith(anchor)]
    if len(prefixes) != 1:
        raise CheckpointError(
            f"{source}: cannot find the model's weights in the checkpoint ({len(prefixes)} candidates)"
        )
    prefix = prefixes[0]
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = len(state) - len(out)
    if dropped:
        log.info("%s: ignored %d entries outside the model (prefix %r)", source, dropped, prefix)
    return out


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state, embedded model config or None)`` of any supported weights file."""
    path = Path(path)
    raw, metadata = read_raw(path)
    if CONFIG_METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: metadata {CONFIG_METADATA_KEY!r} is not valid JSON: {err}") from err
        return unwrap_state(raw, str(path)), config
    hparams = raw.get(CKPT_HPARAMS_KEY)
    if isinstance(hparams, Mapping) and CKPT_MODEL_KEY in hparams and isinstance(raw.get("state_dict"), Mapping):
        from gemdepth.models.presets import resolve_model_config

        config = resolve_model_config(hparams[CKPT_MODEL_KEY])
        return _strip_model_prefix(raw["state_dict"], str(path)), config
    return unwrap_state(raw, str(path)), None


def load_model(
    weights: str | Path,
    config: Mapping[str, Any] | str | Path | None = None,
    device: str | torch.device = "cpu",
    partial: str | Sequence[str] | None = None,
) -> VideoDepthModel:
    """Build the model and load ``weights`` into it; returns it in eval mode on ``device``.

    ``weights``: an official ``.pth``/``.safetensors`` (needs ``config``: a preset name such as
    ``vda-vitl``, a model YAML or dict), a gemdepth checkpoint (config embedded; a ``config``
    passed anyway takes precedence), or a preset name with released weights (``"vda-vits"``,
    ``"gemdepth-vda-vitl"``, see ``gemdepth models``): fetched from the Hugging Face Hub into its
    cache (:mod:`gemdepth.weights.hub`), built with that preset. The model's memory budget and
    head layout are set for ``device`` (:func:`gemdepth.models.chunking.tune_for_device`); call
    ``set_max_memory`` afterwards to choose another budget. ``partial``: ``"new-modules"``
    (plug-ins may start fresh), ``"temporal-head"`` (motion modules may start fresh), or a list.
    """
    from gemdepth.models.model import build_model, normalize_config
    from gemdepth.models.presets import resolve_model_config

    if isinstance(weights, str) and not Path(weights).exists():
        from gemdepth.weights.hub import ZOO, resolve_weights

        if weights in ZOO:
            config = weights if config is None else config
            weights = resolve_weights(weights)
    path = Path(weights)
    state, embedded = read_checkpoint(path)
    if config is None and embedded is None:
        from gemdepth.models.presets import preset_names

        raise CheckpointError(
            f"{path} carries no model config (an official checkpoint?): pass config= a preset "
            f"({', '.join(preset_names())}), a model YAML or a dict"
        )
    cfg = normalize_config(resolve_model_config(config if config is not None else embedded))
    model = build_model(cfg)
    adapter = identity_adapter() if embedded is not None else adapter_for(state, str(path))
    target = {k: v.shape for k, v in model.state_dict().items()}
    try:
        result = adapter.adapt_report(state, target, partial_patterns(partial))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    missing, unexpected = model.load_state_dict(result.state, strict=False)
    if unexpected or set(missing) != set(result.missing_allowed):  # pragma: no cover - adapt_report guarantees
        raise CheckpointError(f"{path}: internal key mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if result.unused:
        log.info("%s: %d stored keys unused by design (%s adapter)", path, len(result.unused), adapter.name)
    if result.missing_allowed:
        modules = sorted({".".join(k.split(".")[:2]) for k in result.missing_allowed})
        log.warning("%s: %d tensors start fresh (partial=%r): %s", path, len(result.missing_allowed), partial, modules)
    from gemdepth.models.chunking import tune_for_device

    return tune_for_device(model.to(device).eval(), device)  # memory budget and layout for this device
