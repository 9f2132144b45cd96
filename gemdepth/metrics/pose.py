"""Camera and 3D-structure metrics: ATE (trajectory error) and F1 (point-cloud F-score, Eq. 7-8).

ATE: camera centres ``c_i`` of the predicted and ground-truth world-to-camera poses are
aligned with the least-squares similarity (Umeyama) ``c ↦ s·R·c + t`` predicted → ground truth,
then ``ATE_seq = sqrt(mean_i ‖s·R·ĉ_i + t − c_i‖²)`` (ground-truth units, metres); the metric
is the mean over sequences. Invariant to any similarity transform of the prediction (GEM's
poses are relative to frame 0 and up to scale).

F1 (GemDepth Eq. 7-8): the reconstructed point set ``R`` back-projects the *aligned* predicted
depth (the same per-sequence alignment as AbsRel, so metric scale) with the predicted
intrinsics and the predicted poses after a similarity alignment of the trajectory to the
ground truth; ``G`` back-projects the ground-truth depth with the ground-truth cameras. The
same pixels feed both (valid ground truth, optionally a fixed-seed subsample per frame)::

    P(d) = mean_{r∈R} [min_{g∈G} ‖r−g‖ < d],  R(d) = mean_{g∈G} [min_{r∈R} ‖g−r‖ < d]
    F1(d) = 2·P·R / (P + R)        (0 when P + R = 0)

The pose alignment places cameras, not points: camera ``i`` gets rotation ``R·R_iᵀ``
(camera→world) and centre ``s·R·ĉ_i + t``; its camera-frame points are already metric
(aligned depth), so they are not scaled again. ``pose_alignment="first_frame"`` instead
identifies both frame-0 cameras and fits only a scale to the centres — well-posed for the
straight trajectories where an Umeyama rotation is not (collinear centres leave the roll
about the line free). Trajectories whose centres are (numerically) one point or one line, or
have fewer than 3 cameras, fall back to ``first_frame`` and are counted
(:attr:`F1Score.pose_fallbacks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from gemdepth.geometry import camera_centres, compose_extrinsics, invert_rigid, umeyama
from gemdepth.metrics.align import AlignMode
from gemdepth.metrics.base import (
    AlignedSequenceMetric,
    SequenceMetric,
    check_cameras,
    check_sequence_inputs,
    log,
    sequence_label,
    split_sequences,
)
from gemdepth.metrics.neighbours import nearest_sq_dist, nearest_sq_dist_pruned
from gemdepth.metrics.points import pixel_points, sample_pixels

__all__ = ["ATE", "F1Score", "align_trajectory", "aligned_camera_to_world"]


def _degenerate(centres: Tensor) -> bool:
    """Centres on one point or one line: the rotation of a similarity fit is then undetermined."""
    if centres.shape[0] < 3:
        return True
    sv = torch.linalg.svdvals(centres - centres.mean(0, keepdim=True))
    return bool(sv[0] <= 1e-9 * max(1.0, float(centres.abs().max())) or sv[1] <= 1e-6 * sv[0])


def align_trajectory(pred_extrinsics: Tensor, gt_extrinsics: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Umeyama ``(s, R, t)`` (float64) mapping predicted camera centres onto ground-truth ones."""
    src = camera_centres(pred_extrinsics.double())
    dst = camera_centres(gt_extrinsics.double())
    return umeyama(src, dst, with_scale=with_scale)


def aligned_camera_to_world(
    pred_extrinsics: Tensor,
    gt_extrinsics: Tensor,
    mode: Literal["umeyama", "first_frame"] = "umeyama",
) -> Tensor:
    """Predicted camera→world ``(T, 4, 4)`` float64 in the ground truth's world frame.

    ``umeyama``: the similarity of camera centres (rotation ``R·R_iᵀ``, centre ``s·R·ĉ_i + t``).
    ``first_frame``: frame 0 cameras identified, centres scaled by the least-squares ratio.
    """
    pred = pred_extrinsics.double()
    gt = gt_extrinsics.double()
    if mode == "umeyama":
        s, rot, trans = align_trajectory(pred, gt)
        c2w = invert_rigid(pred)
        new_rot = rot @ c2w[:, :3, :3]
        centres = s * (c2w[:, :3, 3] @ rot.T) + trans
        return compose_extrinsics(new_rot, centres)
    if mode == "first_frame":
        pred0 = pred @ invert_rigid(pred[:1])  # relative to predicted frame 0
        gt0 = gt @ invert_rigid(gt[:1])
        cp, cg = camera_centres(pred0), camera_centres(gt0)
        denom = float((cp * cp).sum())
        scale = float((cp * cg).sum()) / denom if denom > 0 else 1.0
        c2w0 = invert_rigid(pred0)
        c2w0 = compose_extrinsics(c2w0[:, :3, :3], scale * c2w0[:, :3, 3])
        return invert_rigid(gt[:1]) @ c2w0  # frame-0 camera coordinates → ground-truth world
    raise ValueError(f"pose_alignment must be 'umeyama' or 'first_frame', got {mode!r}")


class ATE(SequenceMetric):
    """Absolute trajectory error: RMSE of Umeyama-aligned predicted camera centres.

    Formula: see :mod:`gemdepth.metrics.pose`. ``compute()`` is the mean over sequences
    (ground-truth units).

    Args:
        with_scale: fit a similarity (default; GEM's translation scale is arbitrary) or a
            rigid transform.
    """

    higher_is_better = False
    _COUNTERS = {"sequences_scored": "ate_sequences", "sequences_skipped": "ate_sequences_skipped"}

    def __init__(self, with_scale: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.with_scale = with_scale
        self._add_sum_state("ate_sum", "ate_sequences", "ate_sequences_skipped")

    def update(
        self,
        pred_extrinsics: Tensor,
        gt_extrinsics: Tensor | None = None,
        *,
        extrinsics: Tensor | None = None,
        name: str | Sequence[str] | None = None,
    ) -> None:
        """Score one trajectory ``(T, 4, 4)`` (or a batch ``(B, T, 4, 4)``).

        Args:
            pred_extrinsics: predicted world-to-camera poses (any world frame and scale).
            gt_extrinsics: ground-truth world-to-camera poses. ``extrinsics`` is an alias so
                that one keyword call updates a whole collection.
            name: sequence name for messages.
        """
        if gt_extrinsics is None:
            gt_extrinsics = extrinsics
        elif extrinsics is not None and extrinsics is not gt_extrinsics:
            raise ValueError("ATE.update: pass gt_extrinsics or extrinsics, not both")
        if gt_extrinsics is None:
            raise ValueError("ATE.update needs the ground-truth poses (gt_extrinsics=...)")
        if pred_extrinsics is None:
            raise ValueError("ATE.update needs the predicted poses (pred_extrinsics=...)")
        for pe, ge, seq_name in split_sequences(pred_extrinsics, gt_extrinsics, name=name):
            label = sequence_label(seq_name)
            if pe.dim() != 3 or pe.shape[-2:] != (4, 4):
                raise ValueError(f"{label}: pred_extrinsics must be (T, 4, 4), got {tuple(pe.shape)}")
            check_cameras(None, pe, pe.shape[0], label, "pred_")
            check_cameras(None, ge, pe.shape[0], label, "gt_")
            if pe.shape[0] < 2:
                log.warning("%s: ATE needs at least 2 cameras; skipped", label)
                self._add("ate_sequences_skipped", 1)
                continue
            s, rot, trans = align_trajectory(pe, ge, self.with_scale)
            src = camera_centres(pe.double())
            dst = camera_centres(ge.double())
            moved = s * (src @ rot.T) + trans
            self._add("ate_sum", ((moved - dst) ** 2).sum(-1).mean().sqrt())
            self._add("ate_sequences", 1)

    def compute(self) -> Tensor:
        """Mean per-sequence ATE."""
        return self._mean(self.ate_sum, self.ate_sequences)

    @property
    def sequences_skipped(self) -> int:
        return int(self.ate_sequences_skipped)


class F1Score(AlignedSequenceMetric):
    """Point-cloud F-score at distance ``threshold`` (GemDepth Eq. 7-8), mean over sequences.

    Formula and pose alignment: see :mod:`gemdepth.metrics.pose`. ``compute()`` returns the
    mean F1 in ``[0, 1]`` (the paper prints ×100), or with ``return_components=True`` a dict
    ``{"f1", "precision", "recall"}``.

    Args:
        threshold: distance ``d`` in ground-truth units (metres). The paper does not state
            it; 0.05 m is a common indoor choice — set it per dataset.
        alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames: as
            :class:`~gemdepth.metrics.depth.DepthMetrics` (the depth alignment).
        num_points: fixed-seed subsample of at most this many pixels per frame (``None``: all
            valid pixels; memory and time grow with the sequence's point count).
        seed: subsampling seed.
        pose_alignment: ``umeyama`` (default) or ``first_frame``.
        nn: ``auto``/``brute``/``pruned`` nearest-neighbour search (all exact).
        brute_force_max: ``auto`` uses brute force while ``|R|·|G| ≤`` this.
        chunk_elems: largest distance block held in memory.
    """

    higher_is_better = True
    _COUNTERS = {
        "sequences_scored": "f1_sequences", "sequences_skipped": "f1_sequences_skipped",
        "pose_fallbacks": "f1_pose_fallbacks",
    }

    def __init__(
        self,
        threshold: float = 0.05,
        alignment: AlignMode = "disparity_lstsq",
        *,
        max_depth: float | None = None,
        min_depth: float = 1e-3,
        eps: float = 1e-3,
        pred_kind: Literal["disparity", "depth"] = "disparity",
        resize_pred: bool = False,
        num_points: int | None = None,
        seed: int = 0,
        pose_alignment: Literal["umeyama", "first_frame"] = "umeyama",
        nn: Literal["auto", "brute", "pruned"] = "auto",
        brute_force_max: int = 1 << 26,
        chunk_elems: int = 1 << 20,
        return_components: bool = False,
        chunk_frames: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        if pose_alignment not in ("umeyama", "first_frame"):
            raise ValueError(f"pose_alignment must be 'umeyama' or 'first_frame', got {pose_alignment!r}")
        if nn not in ("auto", "brute", "pruned"):
            raise ValueError(f"nn must be 'auto', 'brute' or 'pruned', got {nn!r}")
        self._init_alignment(alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames)
        self.threshold = float(threshold)
        self.num_points = num_points
        self.seed = seed
        self.pose_alignment = pose_alignment
        self.nn = nn
        self.brute_force_max = brute_force_max
        self.chunk_elems = chunk_elems
        self.return_components = return_components
        self._add_sum_state("f1_sum", "f1_precision_sum", "f1_recall_sum", "f1_sequences",
                            "f1_sequences_skipped", "f1_pose_fallbacks")

    def update(
        self,
        pred: Tensor,
        gt_depth: Tensor,
        valid: Tensor | None = None,
        intrinsics: Tensor | None = None,
        extrinsics: Tensor | None = None,
        *,
        pred_extrinsics: Tensor | None = None,
        pred_intrinsics: Tensor | None = None,
        name: str | Sequence[str] | None = None,
    ) -> None:
        """Score one sequence (or a batch).

        Args:
            pred: raw relative disparity ``(T, H, W)`` (or depth with ``pred_kind="depth"``).
            gt_depth: metres ``(T, H, W)``; valid: optional bool ``(T, H, W)``.
            intrinsics, extrinsics: ground-truth ``(T, 3, 3)`` pixels and ``(T, 4, 4)``
                world-to-camera (required).
            pred_extrinsics: predicted world-to-camera ``(T, 4, 4)`` (GEM's, required).
            pred_intrinsics: predicted ``(T, 3, 3)`` in pixels *of the depth map's size*;
                ``None`` uses the ground-truth intrinsics.
            name: sequence name for messages.
        """
        if pred_extrinsics is None:
            raise ValueError("F1Score.update needs the predicted poses: pass pred_extrinsics=(T, 4, 4)")
        for p, g, v, k, e, pe, pk, seq_name in split_sequences(
            pred, gt_depth, valid, intrinsics, extrinsics, pred_extrinsics, pred_intrinsics, name=name
        ):
            check_sequence_inputs(p, g, v, k, e, name=seq_name, need_cameras="F1Score",
                                  allow_resize=self.align_config.resize_pred)
            check_cameras(pk, pe, g.shape[0], sequence_label(seq_name), "pred_")
            self._update_one(p, g, v, k, e, pe, pk, seq_name)

    def _within(self, query: Tensor, ref: Tensor) -> Tensor:
        if query.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=query.device)
        if self.nn == "brute" or (self.nn == "auto" and query.shape[0] * ref.shape[0] <= self.brute_force_max):
            d2 = nearest_sq_dist(query, ref, chunk_elems=self.chunk_elems)
        else:
            d2 = nearest_sq_dist_pruned(query, ref, radius=self.threshold, chunk_elems=self.chunk_elems)
        return d2 < self.threshold**2

    def _update_one(self, pred: Tensor, gt: Tensor, valid: Tensor | None, intr: Tensor, extr: Tensor,
                    pred_extr: Tensor, pred_intr: Tensor | None, name: str | None) -> None:
        label = sequence_label(name)
        if gt.shape[0] < 2:
            log.warning("%s: F1 needs at least 2 frames to align the trajectory; skipped", label)
            self._add("f1_sequences_skipped", 1)
            return
        aligned = self._aligned(pred, gt, valid, name, "f1_sequences_skipped")
        if aligned is None:
            return
        mode = self.pose_alignment
        if mode == "umeyama" and (_degenerate(camera_centres(pred_extr.double()))
                                  or _degenerate(camera_centres(extr.double()))):
            log.warning("%s: camera centres do not determine a similarity; F1 uses first_frame alignment", label)
            self._add("f1_pose_fallbacks", 1)
            mode = "first_frame"
        pred_c2w = aligned_camera_to_world(pred_extr, extr, mode)
        gt_c2w = invert_rigid(extr.double())
        k_pred = intr if pred_intr is None else pred_intr
        recon, truth = [], []
        step = max(1, self.align_config.chunk_frames)
        for a in range(0, gt.shape[0], step):
            b = a + step
            idx, sel = sample_pixels(aligned.valid[a:b], self.num_points, seed=self.seed, first_frame=a)
            recon.append(pixel_points(aligned.depth[a:b], idx, k_pred[a:b], pred_c2w[a:b])[sel])
            truth.append(pixel_points(gt[a:b], idx, intr[a:b], gt_c2w[a:b])[sel])
        rec, tru = torch.cat(recon), torch.cat(truth)
        precision = self._within(rec, tru).double().mean()
        recall = self._within(tru, rec).double().mean()
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
        self._add("f1_sum", f1)
        self._add("f1_precision_sum", precision)
        self._add("f1_recall_sum", recall)
        self._add("f1_sequences", 1)

    def compute(self) -> Tensor | dict[str, Tensor]:
        """Mean F1 over sequences (or the components dict with ``return_components``)."""
        f1 = self._mean(self.f1_sum, self.f1_sequences)
        if not self.return_components:
            return f1
        return {
            "f1": f1,
            "precision": self._mean(self.f1_precision_sum, self.f1_sequences),
            "recall": self._mean(self.f1_recall_sum, self.f1_sequences),
        }

    @property
    def sequences_skipped(self) -> int:
        return int(self.f1_sequences_skipped)

    @property
    def pose_fallbacks(self) -> int:
        """Sequences whose trajectories were degenerate for Umeyama (used ``first_frame``)."""
        return int(self.f1_pose_fallbacks)
