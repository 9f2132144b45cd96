"""gemdepth: 3D-consistent video depth estimation (GemDepth) in PyTorch Lightning."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(weights: Any, config: Any = None, device: Any = "cpu", partial: Any = None) -> Any:
    """Build a model and load weights into it (see :func:`gemdepth.weights.load_model`)."""
    from gemdepth.weights import load_model as _load_model

    return _load_model(weights, config=config, device=device, partial=partial)


def infer_video(model: Any, frames: Any, **kwargs: Any) -> Any:
    """Stream a video through a model in windows (see :func:`gemdepth.inference.infer_video`)."""
    from gemdepth.inference import infer_video as _infer_video

    return _infer_video(model, frames, **kwargs)


__all__ = ["__version__", "infer_video", "load_model"]
