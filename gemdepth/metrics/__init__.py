"""Evaluation metrics of GemDepth (paper §4.2, Appendix A.3) as ``torchmetrics`` metrics.

=============  ==============================================================  =================
metric         meaning                                                         module
=============  ==============================================================  =================
AbsRel, δ1-3,  per-pixel accuracy after one scale/shift per sequence            :mod:`.depth`
RMSE           (``DepthMetrics`` computes all five from one alignment)
TAE            temporal alignment error ×100 (VDA benchmark; Eq. 4 variant)     :mod:`.temporal`
TCD            temporal Chamfer distance, m² (Eq. 5-6)                          :mod:`.temporal`
ATE            trajectory RMSE after Umeyama similarity alignment               :mod:`.pose`
F1Score        point-cloud F-score at a distance (Eq. 7-8)                      :mod:`.pose`
=============  ==============================================================  =================

Common update signature (one sequence, or a ``(B, …)`` batch of them)::

    metric.update(pred, gt_depth, valid=None, intrinsics=None, extrinsics=None, *, name=None)

with ``pred`` the model's raw relative disparity ``(T, H, W)``, ``gt_depth`` metres,
``intrinsics`` ``(T, 3, 3)`` pixels, ``extrinsics`` ``(T, 4, 4)`` world-to-camera. ``ATE`` takes
``update(pred_extrinsics, gt_extrinsics)``; ``F1Score`` also ``pred_extrinsics=`` and
``pred_intrinsics=``. All states are sums (``dist_reduce_fx="sum"``): DDP results equal the
single-process ones.

:func:`build_metrics` makes a :class:`SequenceMetrics` collection whose ``update`` takes all
of these arguments at once and routes each to the metrics that use it.

Reproducing published numbers (Video Depth Anything benchmark, which GemDepth follows):
defaults are the protocol wherever it is well-defined; where the reference code has a quirk
that changes numbers, the default is the correct behaviour and a named flag restores the
reference's:

* depth metrics: alignment ``disparity_lstsq`` with the raw prediction clipped at ``eps=1e-3``
  before the fit, valid ``1e-3 < gt < max_depth`` (the reference's ``min_depth_eval=0.1`` is
  unused), per-frame scores averaged over frames then sequences, RMSE as a mean of per-frame
  RMSEs — all as the reference. A prediction of another size raises unless
  ``resize_pred=True`` (the reference's silent bilinear ``cv2.resize``).
* TAE: ``zbuffer=False`` (last write wins instead of the nearest point; no ``z > 0`` test),
  ``empty_as_zero=True`` (an empty direction counts as error 0 instead of being left out),
  ``shared_intrinsics=True`` (frame k's intrinsics for both directions) — or all three via
  :meth:`TAE.vda_reference`; ``variant="eq4"`` for the paper's ``1/(2(T−2))``; ``mask``
  ``none`` as the published ScanNet run.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torchmetrics import Metric, MetricCollection

from gemdepth.metrics.align import (
    ALIGN_MODES,
    AlignConfig,
    AlignedSequence,
    EmptySequenceError,
    align_sequence,
    clear_alignment_cache,
    gt_valid_mask,
)
from gemdepth.metrics.depth import RMSE, AbsRel, DepthMetrics, Delta1, Delta2, Delta3
from gemdepth.metrics.pose import ATE, F1Score
from gemdepth.metrics.temporal import TAE, TCD

__all__ = [
    "AbsRel",
    "Delta1",
    "Delta2",
    "Delta3",
    "RMSE",
    "DepthMetrics",
    "TAE",
    "TCD",
    "ATE",
    "F1Score",
    "METRICS",
    "SequenceMetrics",
    "build_metrics",
    "canonical_metric_name",
    "AlignConfig",
    "AlignedSequence",
    "ALIGN_MODES",
    "EmptySequenceError",
    "align_sequence",
    "clear_alignment_cache",
    "gt_valid_mask",
]

#: Canonical name → metric class.
METRICS: dict[str, type[Metric]] = {
    "DepthMetrics": DepthMetrics,
    "AbsRel": AbsRel,
    "Delta1": Delta1,
    "Delta2": Delta2,
    "Delta3": Delta3,
    "RMSE": RMSE,
    "TAE": TAE,
    "TCD": TCD,
    "ATE": ATE,
    "F1Score": F1Score,
}

_ALIASES = {
    "depth": "DepthMetrics", "depthmetrics": "DepthMetrics",
    "absrel": "AbsRel", "delta1": "Delta1", "d1": "Delta1", "δ1": "Delta1",
    "delta2": "Delta2", "d2": "Delta2", "δ2": "Delta2", "delta3": "Delta3", "d3": "Delta3", "δ3": "Delta3",
    "rmse": "RMSE", "tae": "TAE", "tcd": "TCD", "ate": "ATE", "f1": "F1Score", "f1score": "F1Score",
}
_DEPTH_FAMILY = {"DepthMetrics", "AbsRel", "Delta1", "Delta2", "Delta3", "RMSE"}
_BASE_KWARGS = {
    "compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
    "sync_on_compute", "compute_with_cache",
}


def canonical_metric_name(name: str) -> str:
    """``"abs_rel"``, ``"absrel"``, ``"AbsRel"`` → ``"AbsRel"``; unknown names raise ``KeyError``."""
    if name in METRICS:
        return name
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    if key in _ALIASES:
        return _ALIASES[key]
    raise KeyError(f"unknown metric {name!r}; choose from {sorted(METRICS)} (case and '_' do not matter)")


def _init_params(cls: type[Metric]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}


class SequenceMetrics(MetricCollection):
    """A ``MetricCollection`` whose ``update``/``forward`` take the common sequence signature.

    ``update(pred, gt_depth, valid=None, intrinsics=None, extrinsics=None, *,
    pred_extrinsics=None, pred_intrinsics=None, name=None)``: positional arguments are turned
    into keywords so that each metric receives exactly the arguments its own ``update``
    names (``ATE`` gets ``pred_extrinsics`` and the ground-truth ``extrinsics``).
    """

    @staticmethod
    def _as_kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = ("pred", "gt_depth", "valid", "intrinsics", "extrinsics")
        if len(args) > len(names):
            raise TypeError(f"at most {len(names)} positional arguments ({', '.join(names)}), got {len(args)}")
        out = dict(zip(names, args))
        clash = set(out) & set(kwargs)
        if clash:
            raise TypeError(f"argument(s) {sorted(clash)} given both positionally and by keyword")
        out.update(kwargs)
        return {k: v for k, v in out.items() if v is not None}

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(**self._as_kwargs(args, kwargs))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super().forward(**self._as_kwargs(args, kwargs))


def build_metrics(names: str | Iterable[str], **options: Any) -> SequenceMetrics:
    """A :class:`SequenceMetrics` collection of the named metrics.

    Args:
        names: metric names (``AbsRel``, ``Delta1``, ``Delta2``, ``Delta3``, ``RMSE``,
            ``DepthMetrics``, ``TAE``, ``TCD``, ``ATE``, ``F1Score``; case-insensitive, ``_``
            ignored, ``F1`` accepted).
        **options: keyword arguments for the metrics' constructors. A plain option (e.g.
            ``max_depth=10.0``, ``alignment="median"``) goes to every metric that accepts it
            and must be accepted by at least one; an option named after a metric with a dict
            value (e.g. ``TAE={"variant": "eq4"}``, ``tcd={"num_points": 4096}``) goes to that
            metric only and wins over plain options.

    The depth metrics (AbsRel … RMSE) built with identical options form one compute group,
    so the collection aligns and scores each sequence once for all of them.
    """
    if isinstance(names, str):
        names = [names]
    canon = [canonical_metric_name(n) for n in names]
    if len(set(canon)) != len(canon):
        raise ValueError(f"metric names repeat: {list(names)}")
    if not canon:
        raise ValueError("build_metrics needs at least one metric name")
    per_metric: dict[str, dict[str, Any]] = {}
    common: dict[str, Any] = {}
    for key, value in options.items():
        try:
            target = canonical_metric_name(key)
        except KeyError:
            common[key] = value
            continue
        if not isinstance(value, Mapping):
            raise TypeError(f"option {key!r} names a metric; give it a dict of that metric's options")
        per_metric[target] = dict(value)
    used: set[str] = set()
    metrics: dict[str, Metric] = {}
    effective: dict[str, dict[str, Any]] = {}
    for name in canon:
        cls = METRICS[name]
        accepted = _init_params(cls) | _BASE_KWARGS
        kwargs = {k: v for k, v in common.items() if k in accepted}
        used.update(kwargs)
        own = per_metric.get(name, {})
        unknown = set(own) - accepted
        if unknown:
            raise TypeError(f"{name} does not accept option(s) {sorted(unknown)}; it takes {sorted(_init_params(cls))}")
        kwargs.update(own)
        effective[name] = kwargs
        metrics[name] = cls(**kwargs)
    unused = set(common) - used
    if unused:
        raise TypeError(f"option(s) {sorted(unused)} are accepted by none of {canon}")
    stray = set(per_metric) - set(canon)
    if stray:
        raise ValueError(f"options given for metric(s) {sorted(stray)} that are not in {canon}")
    groups: list[list[str]] = []
    for name in canon:
        if name not in _DEPTH_FAMILY:
            continue
        for group in groups:
            if effective[group[0]] == effective[name]:
                group.append(name)
                break
        else:
            groups.append([name])
    groups = [g for g in groups if len(g) > 1]
    return SequenceMetrics(metrics, compute_groups=groups if groups else False)
