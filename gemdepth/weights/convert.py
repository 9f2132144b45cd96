"""``gemdepth convert SRC DST --model PRESET_OR_YAML``: official weights → self-describing checkpoint.

The output is a ``.safetensors`` file of our model's state dict whose metadata embeds the model
config (JSON under ``gemdepth_config``), so ``gemdepth.load_model(DST)`` needs nothing else.
It is written atomically beside its final name with the usual permissions (``0666 & ~umask``).
Every bad input (missing or unreadable file, unknown model, keys that do not fit, an output
that cannot be written) ends in a message naming the file and the fix, and exit status 1 or 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import gemdepth
from gemdepth.atomic import atomic_path, unwritable_reason
from gemdepth.weights import CONFIG_METADATA_KEY, PARTIAL_ALLOW, load_model
from gemdepth.weights.common import CheckpointError

PROG = "gemdepth convert"


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
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return path


def check_output(path: Path) -> str | None:
    """Why ``path`` cannot take a checkpoint (``None``: it can), checked before any loading."""
    if path.suffix != ".safetensors":
        return f"{path}: the output must be a .safetensors file; give a name ending in .safetensors"
    if path.is_dir():
        return f"{path} is a folder; give a file name such as {path / 'model.safetensors'}"
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder, so {path} cannot be created there; choose another output path"
    why = unwritable_reason(existing) if existing is not None else None
    if why:
        return f"cannot write {path}: {existing} is not writable ({why}); choose a writable folder"
    return None


def _os_message(err: OSError, fallback: Path) -> str:
    where = err.filename or fallback
    reason = err.strerror or str(err)
    fix = {
        errno.ENOSPC: "free some space or choose another output folder",
        errno.EDQUOT: "free some space or choose another output folder",
        errno.EACCES: "choose a writable output folder",
        errno.EPERM: "choose a writable output folder",
        errno.EROFS: "the filesystem is read-only; choose another output folder",
    }.get(err.errno or 0, "check the path")
    return f"cannot write {fallback} ({where}: {reason}); {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gemdepth convert``; 0 on success, 1 when the conversion fails, 2 on usage errors."""
    parser = argparse.ArgumentParser(
        prog=PROG,
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

    def fail(message: str, code: int = 1) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        return code

    if not args.src.exists():
        return fail(f"{args.src}: no such file; give the path of the weights to convert", 2)
    if not args.src.is_file():
        return fail(f"{args.src} is not a file; give the path of a .pth or .safetensors weights file", 2)
    problem = check_output(args.dst)
    if problem:
        return fail(problem, 2)
    from gemdepth.models.presets import resolve_model_config

    try:
        resolve_model_config(args.model)
    except (ValueError, TypeError, OSError) as err:
        return fail(f"--model {args.model}: {err}; give a preset name or the path of a model YAML", 2)
    try:
        model = load_model(args.src, config=args.model, partial=args.partial)
    except CheckpointError as err:
        message = str(err)
        if "does not fit the model" in message:  # one line first, then the listing of keys
            details = message.split("\n", 1)[1] if "\n" in message else ""
            return fail(
                f"{args.src} does not fit --model {args.model}: pass the --model that matches it, or "
                f"--partial {'/'.join(sorted(PARTIAL_ALLOW))} to let those modules start fresh\n{details}"
            )
        return fail(message if str(args.src) in message else f"{args.src}: {message}")
    except OSError as err:
        return fail(f"cannot read {args.src}: {err.strerror or err}")
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        return fail(f"{args.src} cannot be loaded as --model {args.model}: {err}")
    try:
        out = save_checkpoint(model, model.config, args.dst)
    except OSError as err:
        return fail(_os_message(err, args.dst))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({len(model.state_dict())} tensors, {n_params:,} parameters, model {args.model})")
    return 0
