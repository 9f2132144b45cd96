"""Reading state dicts safely and mapping foreign key layouts onto ours, strictly.

``load_state_file`` never unpickles arbitrary objects (``torch.load(weights_only=True)``);
``KeyAdapter`` renames official keys with ordered regex rules (timm's checkpoint-filter idea,
made strict): every key is either mapped to a model key of the same shape or dropped *by name*
as known-unused, and anything else is an error listing the offending keys.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (the message says why and the fix)."""


def _listing(title: str, items: Sequence[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:MAX_LISTED])
    more = f"\n    … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The top-level object of a checkpoint file (a dict) and its safetensors metadata (``{}`` else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return dict(load_file(str(path))), metadata
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable .safetensors file: {err}") from err
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or one of {PICKLE_SUFFIXES}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():  # not a refusal: the bytes are no pickle
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]}); "
                f"is it a complete .pth/.pt file?"
            ) from err
        raise CheckpointError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle, and "
            f"gemdepth will not unpickle untrusted code. If you trust the file, re-save its tensors "
            f"only, e.g. `torch.save(torch.load(p, weights_only=False)['state_dict'], out)`, or convert "
            f"it to .safetensors (safetensors.torch.save_file). Details: {str(err).splitlines()[0]}"
        ) from err
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load fails on junk with many types (KeyError, EOFError, …)
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {first}); "
            f"is it a complete .pth/.pt file?"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj), {}


def unwrap_state(obj: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the tensor dict inside common wrappers (``{"model": …}``, ``{"state_dict": …}``, …)."""
    for _ in range(3):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source} holds no tensors at the top level or under {list(WRAPPER_KEYS)} "
            f"(top-level keys: {sorted(obj)[:10]})"
        )
    skipped = sorted(k for k in obj if k not in tensors)
    if skipped:
        log.warning("%s: ignoring %d non-tensor entries: %s", source, len(skipped), skipped[:10])
    return tensors


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth/.pt/.ckpt`` (weights only), unwrapped."""
    obj, _ = read_raw(path)
    return unwrap_state(obj, str(path))


def state_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (``{}`` for other files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@dataclass
class AdaptResult:
    """What :meth:`KeyAdapter.adapt_report` did: the renamed state and the keys dropped or left fresh."""

    state: dict[str, Tensor]
    unused: list[str] = field(default_factory=list)
    missing_allowed: list[str] = field(default_factory=list)


class KeyAdapter:
    """Rename a foreign state dict onto our keys with ordered ``(regex, replacement)`` rules.

    ``unused`` patterns name keys the source stores but our model has no use for (matched first,
    by name). ``adapt`` is strict: unmapped keys, target keys nobody provides (unless allowed by
    ``allow_missing``) and shape mismatches raise one :class:`CheckpointError` listing them all.
    """

    def __init__(self, name: str, rules: Sequence[tuple[str, str]], unused: Sequence[str] = ()) -> None:
        self.name = name
        self.rules = [(re.compile(p), r) for p, r in rules]
        self.unused = [re.compile(p) for p in unused]

    def rename(self, key: str) -> str | None:
        """The target name of ``key`` by the first matching rule (``None``: no rule matches)."""
        for pattern, replacement in self.rules:
            if pattern.search(key):
                return pattern.sub(replacement, key)
        return None

    def is_unused(self, key: str) -> bool:
        return any(p.search(key) for p in self.unused)

    def adapt_report(
        self,
        state: Mapping[str, Tensor],
        target_shapes: Mapping[str, torch.Size | Sequence[int]],
        allow_missing: Sequence[str] = (),
    ) -> AdaptResult:
        allowed = [re.compile(p) for p in allow_missing]
        out: dict[str, Tensor] = {}
        sources: dict[str, str] = {}
        unused, unmapped, mismatched, collisions = [], [], [], []
        mismatched_targets: set[str] = set()
        for key, value in state.items():
            if self.is_unused(key):
                unused.append(key)
                continue
            target = self.rename(key)
            if target is None:
                unmapped.append(f"{key} (no rule)")
                continue
            if target not in target_shapes:
                unmapped.append(f"{key} → {target} (the model has no such key)")
                continue
            if target in out:
                collisions.append(f"{key} and {sources[target]} both map to {target}")
                continue
            want = tuple(target_shapes[target])
            if tuple(value.shape) != want:
                mismatched.append(f"{key} {list(value.shape)} → {target} expects {list(want)}")
                mismatched_targets.add(target)
                continue
            out[target] = value
            sources[target] = key
        missing = [k for k in target_shapes if k not in out and k not in mismatched_targets]
        missing_allowed = [k for k in missing if any(p.search(k) for p in allowed)]
        missing_bad = [k for k in missing if k not in set(missing_allowed)]
        if unmapped or mismatched or collisions or missing_bad:
            parts = [f"checkpoint does not fit the model ({self.name} adapter):"]
            if unmapped:
                parts.append(_listing("checkpoint keys with no place in the model", unmapped))
            if mismatched:
                parts.append(_listing("shape mismatches", mismatched))
            if collisions:
                parts.append(_listing("key collisions", collisions))
            if missing_bad:
                parts.append(_listing("model keys the checkpoint does not provide", missing_bad))
            parts.append(
                "  Is this checkpoint of the same architecture and size as the model config? "
                "To start some modules fresh, load with an explicit partial allow-list."
            )
            raise CheckpointError("\n".join(parts))
        return AdaptResult(out, unused, missing_allowed)

    def adapt(
        self,
        state: Mapping[str, Tensor],
        target_shapes: Mapping[str, torch.Size | Sequence[int]],
        allow_missing: Sequence[str] = (),
    ) -> dict[str, Tensor]:
        """Renamed state (see :meth:`adapt_report`); raises :class:`CheckpointError` on any misfit."""
        result = self.adapt_report(state, target_shapes, allow_missing)
        if result.unused:
            log.info(
                "%s adapter: %d stored keys are unused by design: %s",
                self.name, len(result.unused), result.unused[:5],
            )
        return result.state


def identity_adapter(name: str = "gemdepth") -> KeyAdapter:
    """Our own checkpoints: every key maps to itself."""
    return KeyAdapter(name, [(r"^(.*)$", r"\1")])


def dumps_config(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)
