"""Shared machinery of the sequence metrics: sum states, input checks, batch splitting.

Every metric in :mod:`gemdepth.metrics` scores whole sequences and keeps only *sums* (of
per-sequence values and of counts) as ``torchmetrics`` states with ``dist_reduce_fx="sum"``, so
a DDP all-reduce gives exactly the single-process totals whatever rank saw which sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from gemdepth.metrics.align import AlignConfig, AlignedSequence, AlignMode, EmptySequenceError, align_sequence

__all__ = [
    "SequenceMetric",
    "AlignedSequenceMetric",
    "check_sequence_inputs",
    "check_cameras",
    "split_sequences",
    "sequence_label",
]

log = logging.getLogger("gemdepth.metrics")


def sequence_label(name: str | None) -> str:
    """``sequence 'name'`` for messages (``sequence <unnamed>`` without a name)."""
    return f"sequence {name!r}" if name else "sequence <unnamed>"


def _check_mask(mask: Tensor | None, shape: torch.Size, what: str, label: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{label}: {what} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{label}: {what} must be a bool mask, got {mask.dtype}; pass e.g. `mask > 0`")
    if mask.shape != shape:
        raise ValueError(f"{label}: {what} has shape {tuple(mask.shape)} but ground truth is {tuple(shape)}")


def check_cameras(
    intrinsics: Tensor | None, extrinsics: Tensor | None, frames: int, label: str, what: str = ""
) -> None:
    """``intrinsics (T, 3, 3)`` and ``extrinsics (T, 4, 4)``, finite, when given."""
    for mat, shape, kind in ((intrinsics, (3, 3), "intrinsics"), (extrinsics, (4, 4), "extrinsics")):
        if mat is None:
            continue
        name = f"{what}{kind}"
        if not isinstance(mat, Tensor):
            raise TypeError(f"{label}: {name} must be a torch.Tensor, got {type(mat).__name__}")
        if mat.shape != (frames, *shape):
            raise ValueError(
                f"{label}: {name} must be ({frames}, {shape[0]}, {shape[1]}) for {frames} frames, "
                f"got {tuple(mat.shape)}"
            )
        if not bool(torch.isfinite(mat).all()):
            raise ValueError(f"{label}: {name} contain non-finite values")


def check_sequence_inputs(
    pred: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None,
    intrinsics: Tensor | None,
    extrinsics: Tensor | None,
    *,
    name: str | None,
    need_cameras: str | None = None,
    allow_resize: bool = False,
) -> None:
    """Validate one sequence; raise a message naming the sequence, the field and the fix.

    Args:
        need_cameras: the metric's name when it needs ground-truth cameras (else ``None``).
        allow_resize: a prediction of another spatial size is accepted (it will be resized).
    """
    label = sequence_label(name)
    for tensor, what in ((pred, "pred"), (gt_depth, "gt_depth")):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{label}: {what} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 3:
            raise ValueError(f"{label}: {what} must be (T, H, W) for one sequence, got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{label}: {what} must be floating point, got {tensor.dtype}")
    if pred.shape[0] != gt_depth.shape[0]:
        raise ValueError(f"{label}: pred has {pred.shape[0]} frames but gt_depth has {gt_depth.shape[0]}")
    if pred.shape[1:] != gt_depth.shape[1:] and not allow_resize:
        raise ValueError(
            f"{label}: pred is {tuple(pred.shape[1:])} but gt_depth is {tuple(gt_depth.shape[1:])}; "
            "resize the prediction to the ground truth (or build the metric with resize_pred=True)"
        )
    _check_mask(valid, gt_depth.shape, "valid", label)
    frames = gt_depth.shape[0]
    check_cameras(intrinsics, extrinsics, frames, label)
    if need_cameras is not None and (intrinsics is None or extrinsics is None):
        missing = " and ".join(n for n, v in (("intrinsics", intrinsics), ("extrinsics", extrinsics)) if v is None)
        raise ValueError(f"{label}: {need_cameras} needs ground-truth cameras but {missing} were not given")
    bad = ~torch.isfinite(pred)
    if bool(bad.any()):
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise ValueError(
            f"{label}: prediction has {int(bad.sum())} non-finite values (first in frame {first}); "
            "fix the model output (e.g. fp16 overflow) or leave this sequence out"
        )


def _names(name: str | Sequence[str] | None, count: int) -> list[str | None]:
    if name is None or isinstance(name, str):
        return [None if name is None else f"{name}[{i}]" for i in range(count)]
    names = list(name)
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for a batch of {count} sequences")
    return names


def split_sequences(
    pred: Tensor, *others: Tensor | None, name: str | Sequence[str] | None = None
) -> Iterator[tuple[Any, ...]]:
    """Yield ``(pred, *others, name)`` per sequence: a ``(B, T, ...)`` batch is split along B.

    ``pred`` decides: 3-D ``(T, H, W)`` is one sequence; 4-D is a batch, and every other given
    tensor must then carry the same leading batch dimension.
    """
    if isinstance(pred, Tensor) and pred.dim() == 4:
        bsz = pred.shape[0]
        for other in others:
            if other is not None and (not isinstance(other, Tensor) or other.shape[0] != bsz):
                raise ValueError(
                    f"batched update: pred has batch size {bsz} but another input has shape "
                    f"{tuple(getattr(other, 'shape', ()))}"
                )
        for i, seq_name in enumerate(_names(name, bsz)):
            yield (pred[i], *(None if o is None else o[i] for o in others), seq_name)
    else:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string for a single sequence, got {type(name).__name__}")
        yield (pred, *others, name)


class SequenceMetric(Metric):
    """Base class: per-sequence scores accumulated as float64 sums (exact DDP reduction).

    Subclasses list their diagnostic counters in ``_COUNTERS`` (public name → state);
    :meth:`counts` returns them summed over all ranks, the ``*`` properties this rank's.
    """

    is_differentiable = False
    full_state_update = False
    _COUNTERS: dict[str, str] = {}

    def counts(self) -> dict[str, int]:
        """Diagnostic counters (sequences scored/skipped, frames dropped, …) over all ranks.

        In a distributed run every rank must call it (it all-reduces, like ``compute``).
        """
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            return {public: int(getattr(self, state)) for public, state in self._COUNTERS.items()}

    def _add_sum_state(self, *names: str) -> None:
        for state in names:
            self.add_state(state, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, state: str, value: float | Tensor) -> None:
        current = getattr(self, state)
        setattr(self, state, current + torch.as_tensor(value, dtype=torch.float64, device=current.device))

    @staticmethod
    def _mean(total: Tensor, count: Tensor) -> Tensor:
        """``total / count``, NaN (not an error) when nothing was scored."""
        if float(count) == 0:
            return torch.full_like(total, float("nan"))
        return total / count


class AlignedSequenceMetric(SequenceMetric):
    """A sequence metric that first aligns the prediction (:func:`~gemdepth.metrics.align.align_sequence`)."""

    align_config: AlignConfig

    def _init_alignment(
        self, alignment: AlignMode, max_depth: float | None, min_depth: float, eps: float,
        pred_kind: str, resize_pred: bool, chunk_frames: int,
    ) -> None:
        self.align_config = AlignConfig(
            mode=alignment, min_depth=min_depth, max_depth=max_depth, eps=eps,
            pred_kind=pred_kind,  # type: ignore[arg-type]
            resize_pred=resize_pred, chunk_frames=chunk_frames,
        )

    def _aligned(
        self, pred: Tensor, gt: Tensor, valid: Tensor | None, name: str | None, skip_state: str
    ) -> AlignedSequence | None:
        """The aligned sequence, or ``None`` (logged, ``skip_state`` counted) without valid pixels."""
        try:
            return align_sequence(pred, gt, valid, self.align_config)
        except EmptySequenceError:
            log.warning("%s: no valid ground-truth pixel; skipped by %s", sequence_label(name), type(self).__name__)
            self._add(skip_state, 1)
            return None
