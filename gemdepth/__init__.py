"""gemdepth: 3D-consistent video depth estimation (GemDepth) in PyTorch Lightning.

The entry points of the library, :func:`load_model` (weights → model),
:func:`infer_video` (a model over a video of any length, streamed in windows) and
:func:`stream` (online: one frame in, its depth out, constant cost per frame), are the
implementations themselves, not wrappers: ``help()``, IDEs and ``inspect.signature`` see every
option with its default and type. They are imported on first use (PEP 562), so
``import gemdepth`` (and the ``gemdepth`` command's start-up) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # static tools and IDEs see the real functions
    from gemdepth.inference.stream import stream
    from gemdepth.inference.windowing import infer_video
    from gemdepth.weights import load_model

# public name -> module that defines it (imported on first access)
_LAZY = {
    "infer_video": "gemdepth.inference.windowing",
    "load_model": "gemdepth.weights",
    "stream": "gemdepth.inference.stream",
}

__all__ = ["__version__", "infer_video", "load_model", "stream"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'gemdepth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
