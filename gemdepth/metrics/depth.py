"""Per-pixel depth accuracy after per-sequence alignment: AbsRel, δ1/δ2/δ3, RMSE.

Protocol (Video Depth Anything benchmark, GemDepth Appendix A.3): align the whole sequence
once (:func:`gemdepth.metrics.align.align_sequence`), then for every frame ``f`` with valid
pixels ``V_f`` (``min_depth < gt < max_depth`` ∧ ``valid``)::

    AbsRel_f = mean_{V_f} |d − g| / g
    δk_f     = mean_{V_f} [max(d/g, g/d) < 1.25^k]          (k = 1, 2, 3)
    RMSE_f   = sqrt(mean_{V_f} (d − g)²)

A sequence scores the mean over its frames; the metric is the mean over sequences. Frames
without a valid pixel are dropped (as the protocol does) and counted; a sequence without any
valid pixel is skipped, counted and logged.

:class:`DepthMetrics` computes all five from one alignment and returns a dict;
:class:`AbsRel`, :class:`Delta1`, :class:`Delta2`, :class:`Delta3` and :class:`RMSE` are thin
single-value views of it (same states, so a :class:`~torchmetrics.MetricCollection` built by
:func:`gemdepth.metrics.build_metrics` updates them once as a compute group).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from gemdepth.metrics.align import AlignMode
from gemdepth.metrics.base import AlignedSequenceMetric, check_sequence_inputs, log, sequence_label, split_sequences

__all__ = ["DepthMetrics", "AbsRel", "Delta1", "Delta2", "Delta3", "RMSE", "frame_depth_scores"]

_KEYS = ("abs_rel", "delta1", "delta2", "delta3", "rmse")


def _count(mask: Tensor) -> Tensor:
    """True pixels per frame of a bool ``(F, H, W)`` mask, float64 (a uint8 view sums ~2× faster)."""
    return mask.reshape(mask.shape[0], -1).view(torch.uint8).sum(1, dtype=torch.int64).double()


def frame_depth_scores(depth: Tensor, gt: Tensor, mask: Tensor, chunk_frames: int = 32) -> dict[str, Tensor]:
    """Per-frame scores ``(T,)`` float64 of aligned ``depth`` against ``gt`` on ``mask``.

    Returns ``abs_rel``, ``delta1..3``, ``rmse`` and the valid-pixel count ``n`` per frame
    (scores are NaN where ``n == 0``).
    """
    out: dict[str, list[Tensor]] = {k: [] for k in (*_KEYS, "n")}
    for a in range(0, depth.shape[0], max(1, chunk_frames)):
        m = mask[a : a + chunk_frames]
        off = ~m
        # copies (.to(copy=True)): g is changed in place below and must never alias the input
        g = gt[a : a + chunk_frames].to(torch.float64, copy=True).masked_fill_(off, 1.0)
        d = depth[a : a + chunk_frames].to(torch.float64, copy=True)
        n = _count(m)
        diff = d - g
        out["rmse"].append((diff * diff).masked_fill_(off, 0.0).sum((-2, -1)).div_(n).sqrt_())
        out["abs_rel"].append(diff.abs_().div_(g).masked_fill_(off, 0.0).sum((-2, -1)) / n)
        ratio = torch.maximum(d / g, g.div_(d))
        for k in (1, 2, 3):
            out[f"delta{k}"].append(_count((ratio < 1.25**k) & m) / n)
        out["n"].append(n)
    return {k: torch.cat(v) for k, v in out.items()}


class DepthMetrics(AlignedSequenceMetric):
    """AbsRel, δ1, δ2, δ3 and RMSE of aligned depth, as a dict, from one alignment per sequence.

    Formula: see the module docstring. ``compute()`` returns
    ``{"abs_rel", "delta1", "delta2", "delta3", "rmse"}`` (means over sequences, float64;
    NaN before any sequence was scored). Counters: :attr:`frames_scored`,
    :attr:`frames_dropped` (frames without a valid pixel), :attr:`sequences_scored`,
    :attr:`sequences_skipped` (no valid pixel at all) — this rank's; :meth:`counts` gives
    them summed over ranks.

    Args:
        alignment: ``disparity_lstsq`` (protocol), ``depth_lstsq``, ``median``, ``none``.
        max_depth: ground-truth upper bound and prediction clip (protocol: Sintel 70,
            KITTI 80, ScanNet/Bonn/NYUv2 10); ``None`` = unbounded.
        min_depth: ground-truth lower bound (protocol ``1e-3``).
        eps: clip of disparities before inversion and lower clip of depth (protocol ``1e-3``).
        pred_kind: ``disparity`` (relative disparity, the default) or ``depth``.
        resize_pred: bilinearly resize predictions of another size to the ground truth.
        chunk_frames: frames processed at once (memory bound).
    """

    higher_is_better: bool | None = None
    _COUNTERS = {
        "sequences_scored": "depth_sequences", "sequences_skipped": "depth_sequences_skipped",
        "frames_scored": "depth_frames", "frames_dropped": "depth_frames_dropped",
    }

    def __init__(
        self,
        alignment: AlignMode = "disparity_lstsq",
        *,
        max_depth: float | None = None,
        min_depth: float = 1e-3,
        eps: float = 1e-3,
        pred_kind: Literal["disparity", "depth"] = "disparity",
        resize_pred: bool = False,
        chunk_frames: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_alignment(alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames)
        self._add_sum_state(*(f"depth_{k}_sum" for k in _KEYS))
        self._add_sum_state("depth_sequences", "depth_frames", "depth_frames_dropped", "depth_sequences_skipped")

    def update(
        self,
        pred: Tensor,
        gt_depth: Tensor,
        valid: Tensor | None = None,
        intrinsics: Tensor | None = None,
        extrinsics: Tensor | None = None,
        *,
        name: str | Sequence[str] | None = None,
    ) -> None:
        """Score one sequence (or a batch ``(B, T, H, W)`` of sequences).

        Args:
            pred: raw model output ``(T, H, W)``: relative disparity (or depth with
                ``pred_kind="depth"``), any scale and shift.
            gt_depth: ground-truth depth ``(T, H, W)`` in metres (0 = invalid).
            valid: optional bool ``(T, H, W)``; further restricts the valid pixels.
            intrinsics, extrinsics: accepted for a uniform signature; unused.
            name: sequence name used in error messages.
        """
        for p, g, v, seq_name in split_sequences(pred, gt_depth, valid, name=name):
            check_sequence_inputs(p, g, v, None, None, name=seq_name, allow_resize=self.align_config.resize_pred)
            self._update_one(p, g, v, seq_name)

    def _update_one(self, pred: Tensor, gt: Tensor, valid: Tensor | None, name: str | None) -> None:
        aligned = self._aligned(pred, gt, valid, name, "depth_sequences_skipped")
        if aligned is None:
            self._add("depth_frames_dropped", gt.shape[0])
            return
        scores = frame_depth_scores(aligned.depth, gt, aligned.valid, self.align_config.chunk_frames)
        keep = scores["n"] > 0
        kept = int(keep.sum())
        dropped = gt.shape[0] - kept
        if dropped:
            log.info("%s: %d of %d frames have no valid pixel and are dropped", sequence_label(name), dropped, gt.shape[0])
        for k in _KEYS:
            self._add(f"depth_{k}_sum", scores[k][keep].mean())
        self._add("depth_sequences", 1)
        self._add("depth_frames", kept)
        self._add("depth_frames_dropped", dropped)

    def _compute_all(self) -> dict[str, Tensor]:
        return {k: self._mean(getattr(self, f"depth_{k}_sum"), self.depth_sequences) for k in _KEYS}

    def compute(self) -> dict[str, Tensor] | Tensor:
        """Means over sequences: ``{"abs_rel", "delta1", "delta2", "delta3", "rmse"}``."""
        return self._compute_all()

    @property
    def frames_scored(self) -> int:
        """Frames that entered a per-sequence mean (this rank until ``compute`` syncs)."""
        return int(self.depth_frames)

    @property
    def frames_dropped(self) -> int:
        """Frames dropped because no pixel was valid (including those of skipped sequences)."""
        return int(self.depth_frames_dropped)

    @property
    def sequences_scored(self) -> int:
        return int(self.depth_sequences)

    @property
    def sequences_skipped(self) -> int:
        """Sequences without any valid ground-truth pixel."""
        return int(self.depth_sequences_skipped)


class _SingleDepthMetric(DepthMetrics):
    """One value of :class:`DepthMetrics` (same states, same update)."""

    _key: str = ""

    def compute(self) -> Tensor:
        return self._compute_all()[self._key]


class AbsRel(_SingleDepthMetric):
    """Absolute relative error ``mean |d − g| / g`` after alignment (see :class:`DepthMetrics`)."""

    _key = "abs_rel"
    higher_is_better = False


class Delta1(_SingleDepthMetric):
    """Fraction of pixels with ``max(d/g, g/d) < 1.25`` after alignment (see :class:`DepthMetrics`)."""

    _key = "delta1"
    higher_is_better = True


class Delta2(_SingleDepthMetric):
    """Fraction of pixels with ``max(d/g, g/d) < 1.25²`` after alignment."""

    _key = "delta2"
    higher_is_better = True


class Delta3(_SingleDepthMetric):
    """Fraction of pixels with ``max(d/g, g/d) < 1.25³`` after alignment."""

    _key = "delta3"
    higher_is_better = True


class RMSE(_SingleDepthMetric):
    """Per-frame ``sqrt(mean (d − g)²)`` in metres after alignment, averaged over frames."""

    _key = "rmse"
    higher_is_better = False
