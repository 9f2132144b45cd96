"""Held-out evaluation of one trained run: whole sequences through the windowed video inference,
scored with the paper's metrics, plus TAE per frame pair (for the TAE-over-frame-index plot).

The protocol is the demo's (``gemdepth demo``): windows of the model's clip length with the
official overlap, disparity least-squares alignment per sequence, depth scored up to
``max_depth``, sky not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_model", "tae_curve"]


def tae_curve(pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, intrinsics: torch.Tensor,
              extrinsics: torch.Tensor, max_depth: float) -> list[float | None]:
    """TAE ×100 of each consecutive frame pair ``(k, k+1)`` of one sequence (mean of both
    directions; ``None`` where neither direction had a comparable pixel).

    Same alignment and reprojection as :class:`gemdepth.metrics.TAE` (its mean over the pairs
    is the sequence's TAE when no direction is empty).
    """
    from gemdepth.metrics.align import EmptySequenceError, align_sequence
    from gemdepth.metrics.temporal import TAE, tae_errors

    ref = TAE(max_depth=max_depth)
    try:
        aligned = align_sequence(pred, depth, valid, ref.align_config)
    except EmptySequenceError:
        return [None] * (pred.shape[0] - 1)
    errors, empty = tae_errors(aligned.depth, intrinsics, extrinsics, aligned.valid, mask_mode=ref.mask_mode,
                               zbuffer=ref.zbuffer, shared_intrinsics=ref.shared_intrinsics)
    counted = (~empty).sum(1)
    per_pair = 100.0 * errors.sum(1) / counted.clamp_min(1)
    return [float(v) if int(c) else None for v, c in zip(per_pair.tolist(), counted.tolist())]


def evaluate_model(model: Any, sequences: Sequence[dict], metrics: Sequence[str], max_depth: float,
                   window: int) -> dict[str, Any]:
    """Score ``model`` on whole sequences; returns ``{"metrics", "per_sequence", "tae_curve"}``.

    ``tae_curve`` is the per-pair TAE averaged over the sequences (index k: pair k → k+1).
    """
    from gemdepth.demo import predict_sequence
    from gemdepth.metrics import build_metrics
    from gemdepth.training.task import window_settings

    settings = window_settings(window)
    collection = build_metrics(list(metrics), max_depth=max_depth)
    per_sequence: dict[str, dict[str, float]] = {}
    curves = []
    model.eval()
    for seq in sequences:
        tensors = predict_sequence(model, seq, settings)
        name = seq["meta"]["sequence"]
        one = build_metrics(list(metrics), max_depth=max_depth)
        one.update(*tensors, name=name)
        per_sequence[name] = {k: float(v) for k, v in one.compute().items()}
        collection.update(*tensors, name=name)
        curves.append(tae_curve(*tensors, max_depth))
    pairs = max((len(c) for c in curves), default=0)
    curve = []
    for k in range(pairs):
        vals = [c[k] for c in curves if k < len(c) and c[k] is not None]
        curve.append(float(np.mean(vals)) if vals else None)
    return {"metrics": {k: float(v) for k, v in collection.compute().items()},
            "per_sequence": per_sequence, "tae_curve": curve}
