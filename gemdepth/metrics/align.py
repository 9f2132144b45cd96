"""Per-sequence alignment of a relative prediction to metric ground truth (the benchmark protocol).

The Video Depth Anything benchmark (which GemDepth's tables follow) scores a *sequence* with a
single scale and shift:

1. valid pixels ``min_depth < gt < max_depth`` (``min_depth = 1e-3``; the protocol's
   ``min_depth_eval = 0.1`` is declared but never used) and, optionally, a caller's mask;
2. the raw prediction is clipped to ``≥ eps`` (``1e-3``) *before* the fit;
3. ``scale, shift = argmin Σ (scale·pred + shift − 1/gt)²`` over all valid pixels of all
   frames (float64 least squares, ``numpy.linalg.lstsq`` in the reference, whose
   ``1/(gt + 1e-8)`` differs from ``1/gt`` by under 1e-5 relative);
4. ``aligned = clip(scale·pred + shift, eps)``, ``depth = clip(1 / aligned, eps, max_depth)``
   — every pixel, valid or not, gets a depth (TAE uses them all).

:func:`align_sequence` implements that (``mode="disparity_lstsq"``) and three other modes:
``depth_lstsq`` (the same fit in depth space), ``median`` (scale only,
``median(gt) / median(pred_depth)`` in depth space) and ``none`` (the prediction is already
metric). ``pred_kind="depth"`` says the prediction is depth rather than disparity; it is
inverted (after the ``eps`` clip) where the mode works in the other space.

The 2×2 least-squares normal equations are accumulated over chunks of frames in float64 and
solved with ``torch.linalg.lstsq`` (the minimum-norm solution, as ``numpy.linalg.lstsq`` gives
for a constant prediction). This is :func:`gemdepth.geometry.fit_scale_shift`'s closed form;
it is not called directly because it would hold float64 copies of the whole sequence
(a 500-frame 518×686 sequence is 1.4 GB per copy). A small identity cache lets several
metrics updated with the *same* tensors (a metric collection) share one alignment.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AlignMode",
    "ALIGN_MODES",
    "AlignConfig",
    "AlignedSequence",
    "EmptySequenceError",
    "gt_valid_mask",
    "align_sequence",
    "lstsq_scale_shift",
    "clear_alignment_cache",
]

AlignMode = Literal["disparity_lstsq", "depth_lstsq", "median", "none"]
ALIGN_MODES: tuple[str, ...] = ("disparity_lstsq", "depth_lstsq", "median", "none")


class EmptySequenceError(ValueError):
    """A sequence has no valid ground-truth pixel at all, so it cannot be aligned or scored."""


@dataclass(frozen=True)
class AlignConfig:
    """How predictions are aligned and which ground-truth pixels count.

    Attributes:
        mode: ``disparity_lstsq`` (protocol), ``depth_lstsq``, ``median`` or ``none``.
        min_depth: ground truth must be ``> min_depth`` (protocol ``1e-3``).
        max_depth: ground truth must be ``< max_depth`` and predicted depth is clipped to it
            (protocol: 70 Sintel, 80 KITTI, 10 ScanNet/Bonn/NYUv2); ``None`` = no bound.
        eps: lower clip of disparities before the fit and inversion, and of depth (``1e-3``).
        pred_kind: ``disparity`` (GemDepth/VDA/DAv2 output) or ``depth``.
        resize_pred: bilinearly resize a prediction of another size to the ground truth's
            (the protocol's ``cv2.resize``); otherwise a size mismatch is an error.
        chunk_frames: frames processed at once (bounds memory).
    """

    mode: AlignMode = "disparity_lstsq"
    min_depth: float = 1e-3
    max_depth: float | None = None
    eps: float = 1e-3
    pred_kind: Literal["disparity", "depth"] = "disparity"
    resize_pred: bool = False
    chunk_frames: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise ValueError(f"unknown alignment mode {self.mode!r}; choose one of {ALIGN_MODES}")
        if self.pred_kind not in ("disparity", "depth"):
            raise ValueError(f"pred_kind must be 'disparity' or 'depth', got {self.pred_kind!r}")
        if self.max_depth is not None and self.max_depth <= self.min_depth:
            raise ValueError(f"max_depth ({self.max_depth}) must exceed min_depth ({self.min_depth})")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")


@dataclass
class AlignedSequence:
    """Aligned predicted depth ``(T, H, W)`` float32 (metres), ground-truth validity mask
    ``(T, H, W)`` bool, and the fitted ``scale``/``shift`` (in the fit's space; shift 0 for
    ``median``, scale 1 for ``none``)."""

    depth: Tensor
    valid: Tensor
    scale: float
    shift: float
    config: AlignConfig = field(repr=False)


def gt_valid_mask(gt_depth: Tensor, valid: Tensor | None, config: AlignConfig) -> Tensor:
    """``min_depth < gt < max_depth`` (non-finite ground truth is never valid) ``∧ valid``."""
    mask = gt_depth > config.min_depth
    if config.max_depth is not None:
        mask &= gt_depth < config.max_depth
    else:
        mask &= torch.isfinite(gt_depth)
    if valid is not None:
        mask &= valid.to(torch.bool)
    return mask


def _to_fit_space(pred: Tensor, config: AlignConfig) -> Tensor:
    """The prediction in the space its mode fits in (clipped to ``eps`` where it is inverted)."""
    disparity_space = config.mode == "disparity_lstsq"
    if disparity_space:
        clipped = pred.clamp_min(config.eps)
        return clipped if config.pred_kind == "disparity" else 1.0 / clipped
    if config.pred_kind == "disparity":
        return 1.0 / pred.clamp_min(config.eps)
    return pred


def lstsq_scale_shift(chunks: Iterable[tuple[Tensor, Tensor, Tensor]]) -> tuple[float, float]:
    """Least-squares ``(scale, shift)`` with ``scale·x + shift ≈ y`` over masked pixels.

    ``chunks`` yields ``(x, y, mask)`` triples (any shapes; e.g. a few frames each); their
    normal equations are summed in float64 and solved with ``torch.linalg.lstsq`` (the
    minimum-norm solution for a constant ``x``, as ``numpy.linalg.lstsq``).
    """
    stats = torch.zeros(5, dtype=torch.float64)
    for x, y, mask in chunks:
        # [x·m, m] (2, N) against itself and y·m: the five sums in two float64 mat-vec passes
        m = mask.reshape(-1).double()
        design = torch.stack([x.reshape(-1).double() * m, m])
        yv = torch.where(mask.reshape(-1), y.reshape(-1).double(), 0.0)
        gram = design @ design[0]  # Σ m·x², Σ m·x
        stats += torch.stack([gram[0], gram[1], m.sum(), *(design @ yv)]).cpu()
    sxx, sx, n, sxy, sy = stats.tolist()
    if n == 0:
        raise EmptySequenceError("no valid pixel to fit a scale and shift on")
    normal = torch.tensor([[sxx, sx], [sx, n]], dtype=torch.float64)
    rhs = torch.tensor([[sxy], [sy]], dtype=torch.float64)
    sol = torch.linalg.lstsq(normal, rhs, driver="gelsd").solution.squeeze(1)
    return float(sol[0]), float(sol[1])


def _resize(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize ``(T, h, w) → (T, H, W)`` (half-pixel centres, no antialias: cv2.resize)."""
    return F.interpolate(pred[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _compute_alignment(
    pred: Tensor, gt_depth: Tensor, valid: Tensor | None, config: AlignConfig
) -> AlignedSequence:
    if pred.shape[-2:] != gt_depth.shape[-2:]:
        if not config.resize_pred:
            raise ValueError(
                f"prediction is {tuple(pred.shape[-2:])} but ground truth is {tuple(gt_depth.shape[-2:])}; "
                "resize the prediction to the ground truth's size or pass resize_pred=True"
            )
        pred = _resize(pred, tuple(gt_depth.shape[-2:]))
    t = pred.shape[0]
    step = max(1, config.chunk_frames)
    masks = [gt_valid_mask(gt_depth[a : a + step], None if valid is None else valid[a : a + step], config)
             for a in range(0, t, step)]
    mask = torch.cat(masks) if masks else torch.zeros_like(gt_depth, dtype=torch.bool)
    if not bool(mask.any()):
        raise EmptySequenceError("no valid ground-truth pixel in the whole sequence")

    hi = math.inf if config.max_depth is None else config.max_depth
    mode = config.mode
    scale, shift = 1.0, 0.0
    if mode in ("disparity_lstsq", "depth_lstsq"):
        def triples():  # generated lazily so only one float64 chunk lives at a time
            for a in range(0, t, step):
                x = _to_fit_space(pred[a : a + step], config)
                g = gt_depth[a : a + step]
                y = 1.0 / g.double() if mode == "disparity_lstsq" else g
                yield x, y, mask[a : a + step]

        scale, shift = lstsq_scale_shift(triples())
    elif mode == "median":
        x = torch.cat([_to_fit_space(pred[a : a + step], config)[mask[a : a + step]] for a in range(0, t, step)])
        g = gt_depth[mask]
        scale = float(g.double().median() / x.double().median().clamp_min(1e-30))

    depth = torch.empty(gt_depth.shape, dtype=torch.float32, device=pred.device)
    for a in range(0, t, step):
        # a fresh copy (never the caller's tensor, which .double() returns for float64 input)
        d = _to_fit_space(pred[a : a + step], config).to(torch.float64, copy=True)
        if mode == "disparity_lstsq":
            d.mul_(scale).add_(shift).clamp_min_(config.eps).reciprocal_()
        elif mode == "depth_lstsq":
            d.mul_(scale).add_(shift)
        elif mode == "median":
            d.mul_(scale)
        depth[a : a + step] = d.clamp_(config.eps, hi)
    return AlignedSequence(depth=depth, valid=mask, scale=scale, shift=shift, config=config)


# ----------------------------------------------------------------------------- identity cache
_CACHE: dict[tuple, tuple[list[weakref.ref], AlignedSequence]] = {}


def clear_alignment_cache() -> None:
    """Drop the cached alignment (it is also dropped when its input tensors are freed)."""
    _CACHE.clear()


def _key(pred: Tensor, gt: Tensor, valid: Tensor | None, config: AlignConfig) -> tuple:
    tensors = (pred, gt) if valid is None else (pred, gt, valid)
    # Inference-mode tensors (Lightning's validate/test) keep no version counter; their data
    # pointer and shape still identify them while they are alive.
    return tuple(
        (id(x), x.data_ptr(), -1) if x.is_inference() else (id(x), x.data_ptr(), x._version)
        for x in tensors
    ) + (config,)


def align_sequence(
    pred: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None = None,
    config: AlignConfig | None = None,
    *,
    use_cache: bool = True,
) -> AlignedSequence:
    """Align one sequence's prediction ``(T, H, W)`` to its ground-truth depth ``(T, H, W)``.

    Raises :class:`EmptySequenceError` when no pixel of any frame is valid. With ``use_cache``
    the result for the same tensor objects (unchanged since, same config) is reused; the cache
    holds one entry and forgets it when an input tensor is garbage collected.
    """
    config = config or AlignConfig()
    if not use_cache:
        return _compute_alignment(pred, gt_depth, valid, config)
    key = _key(pred, gt_depth, valid, config)
    hit = _CACHE.get(key)
    if hit is not None and all(ref() is not None for ref in hit[0]):
        return hit[1]
    result = _compute_alignment(pred, gt_depth, valid, config)
    _CACHE.clear()
    tensors = [pred, gt_depth] + ([] if valid is None else [valid])
    refs = [weakref.ref(x, lambda _r, k=key: _CACHE.pop(k, None)) for x in tensors]
    _CACHE[key] = (refs, result)
    return result
