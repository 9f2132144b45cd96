"""The models the app offers (no Gradio here): checkpoints given on the command line, presets
whose released weights come from the Hub (:mod:`gemdepth.weights.hub`), and random-weight
configs clearly labelled as untrained demos (they run the whole pipeline, but their depth is
meaningless). One model is kept loaded at a time, to bound memory."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MINI_CONFIG", "ModelChoice", "ModelBank", "choices_from_args"]

log = logging.getLogger(__name__)

# A GemDepth (VDA host, GEM + ASTT) small enough to run on a CPU in a second: a mini DINOv2
# (64 wide, 4 blocks), a DPT head of 32 features over 32-frame windows. Random weights.
MINI_CONFIG: dict[str, Any] = {
    "host": "vda",
    "encoder": {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]},
    "head": {"features": 32, "out_channels": [24, 48, 64, 96], "num_frames": 32, "use_bn": False,
             "use_clstoken": False},
    "plugins": [
        {"name": "gem", "num_heads": 4, "num_register_tokens": 4, "camera_trunk_depth": 1},
        {"name": "astt", "num_heads": 4, "depth": 2},
    ],
}
UNTRAINED_MINI = "untrained mini GemDepth (random weights: demo of the app only, depth is meaningless)"


@dataclass
class ModelChoice:
    """One entry of the model menu: a label and how to build the model on a device."""

    label: str
    build: Callable[[str], nn.Module]
    input_size: int = 518  # suggested network input size
    window: int = 32
    untrained: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _window_of(config: Any) -> int:
    """Frames per window the model was built for (its temporal head's ``num_frames``)."""
    try:
        from gemdepth.models.presets import resolve_model_config

        return int(resolve_model_config(config).get("head", {}).get("num_frames", 32))
    except Exception:  # noqa: BLE001 - only a default for the settings
        return 32


def checkpoint_choice(ckpt: str | Path, config: str | None = None) -> ModelChoice:
    """A local checkpoint (gemdepth's, or official weights with ``config`` a preset / YAML)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (gemdepth app --ckpt PATH)")

    def build(device: str) -> nn.Module:
        import gemdepth

        return gemdepth.load_model(ckpt, config=config, device=device)

    label = f"{ckpt.name}" + (f" ({config})" if config else "")
    return ModelChoice(label, build, info={"checkpoint": str(ckpt), "model": config})


def hub_choice(preset: str) -> ModelChoice:
    """A preset whose released weights are fetched from the Hub cache on first use."""
    from gemdepth.weights.hub import resolve_weights, weights_for

    w = weights_for(preset)  # KeyError with the presets that have weights

    def build(device: str) -> nn.Module:
        import gemdepth

        return gemdepth.load_model(resolve_weights(preset), config=preset, device=device)

    return ModelChoice(f"{preset} (released weights, {w.licence})", build,
                       info={"checkpoint": f"hub:{w.repo_id}/{w.filename}", "model": preset})


def random_choice(config: Any, label: str, input_size: int, seed: int = 0) -> ModelChoice:
    """A model with seeded random weights, labelled untrained."""

    def build(device: str) -> nn.Module:
        from gemdepth.models import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(copy.deepcopy(config))
        return model.to(device).eval()

    return ModelChoice(label, build, input_size=input_size, window=_window_of(config), untrained=True,
                       info={"checkpoint": None, "model": "random weights", "untrained": True})


def choices_from_args(ckpts: list[str], model: str | None, mini: bool = True) -> list[ModelChoice]:
    """The model menu of ``gemdepth app``: each ``--ckpt`` (with ``--model`` as its config when
    given); without a checkpoint, ``--model PRESET`` from the Hub, or as an untrained preset
    when it has no released weights; and the untrained mini model for trying the app."""
    out = [checkpoint_choice(c, model) for c in ckpts]
    if model and not ckpts:
        try:
            out.append(hub_choice(model))
        except (KeyError, ImportError) as err:
            from gemdepth.models.presets import get_preset

            log.warning("%s; using it with random weights (untrained)", err)
            out.append(random_choice(get_preset(model), f"untrained {model} (random weights: depth is meaningless)",
                                     input_size=518))
    if mini:
        out.append(random_choice(MINI_CONFIG, UNTRAINED_MINI, input_size=112))
    return out


class ModelBank:
    """Builds models on demand and keeps the last one loaded (one at a time: bounded memory)."""

    def __init__(self, choices: list[ModelChoice], device: str) -> None:
        if not choices:
            raise ValueError("no model to offer")
        labels = [c.label for c in choices]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two models share a label: {labels}")
        self.choices = {c.label: c for c in choices}
        self.device = device
        self._loaded: tuple[str, nn.Module] | None = None
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    def get(self, label: str) -> tuple[ModelChoice, nn.Module]:
        """The model of ``label``, built (or fetched) if it is not the one loaded."""
        if label not in self.choices:
            raise KeyError(f"unknown model {label!r}; choose one of: {', '.join(self.choices)}")
        with self._lock:
            if self._loaded is None or self._loaded[0] != label:
                self._loaded = None  # drop the previous model before building the next
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                model = self.choices[label].build(self.device)
                model.eval()
                self._loaded = (label, model)
            return self.choices[label], self._loaded[1]
