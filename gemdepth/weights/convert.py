"""``gemdepth convert SRC DST --model PRESET_OR_YAML``: official weights → self-describing checkpoint.

The output is a ``.safetensors`` file of our model's state dict whose metadata embeds the model
config (JSON under ``gemdepth_config``), so ``gemdepth.load_model(DST)`` needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import gemdepth
from gemdepth.weights import CONFIG_METADATA_KEY, PARTIAL_ALLOW, load_model


def save_checkpoint(model: nn.Module, config: Mapping[str, Any] | str | None, path: str | Path) -> Path:
    """Write ``model``'s weights and its (normalised) config to ``path`` (.safetensors), atomically."""
    from safetensors.torch import save_file

    from gemdepth.models.model import normalize_config
    from gemdepth.models.presets import resolve_model_config

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: gemdepth checkpoints are written as .safetensors")
    if config is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("save_checkpoint needs the model config (the model carries none)")
    cfg = normalize_config(resolve_model_config(config))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(cfg, sort_keys=True),
        "gemdepth_version": gemdepth.__version__,
        "format": "pt",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gemdepth convert",
        description="Load official DAv2 / VDA / GemDepth weights (strictly) and write a self-describing "
        ".safetensors checkpoint with the model config embedded.",
    )
    parser.add_argument("src", type=Path, help="official .pth/.safetensors (or a gemdepth checkpoint)")
    parser.add_argument("dst", type=Path, help="output .safetensors")
    parser.add_argument("--model", required=True, help="model preset name or model YAML")
    parser.add_argument(
        "--partial",
        action="append",
        choices=sorted(PARTIAL_ALLOW),
        help="allow these modules to start fresh (repeatable), e.g. new-modules for VDA → GemDepth-VDA",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    model = load_model(args.src, config=args.model, partial=args.partial)
    out = save_checkpoint(model, model.config, args.dst)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({len(model.state_dict())} tensors, {n_params:,} parameters, model {args.model})")
    return 0
