"""Temporal consistency: TAE (Video Depth Anything benchmark / GemDepth Eq. 4) and TCD (Eq. 5-6).

Both align the sequence first exactly as the depth metrics do
(:func:`gemdepth.metrics.align.align_sequence`) and then use the *aligned predicted depth*
``d_k`` with the ground-truth cameras.

TAE (published meaning, VDA ``benchmark/eval/eval_tae.py``): for every consecutive pair and
both directions ``s → t`` (``(k, k+1)`` and ``(k+1, k)``), back-project every pixel of ``d_s``
with ``K_s``, move it with ``E_t · E_s⁻¹`` (world-to-camera extrinsics), project with ``K_t``,
round to the nearest pixel, keep those inside the image, and write the point's z into an
otherwise empty map ``p``. Then::

    err(s→t) = mean_{p > 0 ∧ d_t > 0 [∧ mask_t]} |d_t − p| / d_t      (denominator: target depth)
    TAE_seq  = 100 · Σ err / (number of directions) = 100 / (2(T−1)) · Σ_k [err(k→k+1) + err(k+1→k)]

and the metric is the mean of ``TAE_seq`` over sequences. Every pixel takes part (the
protocol passes no ground-truth mask; depth is clipped to ``[eps, max_depth]``).

Quirks of the reference, and the flags that reproduce them (defaults are the correct ones):

* ``zbuffer=True``: where several points land on one pixel the *nearest* is kept and points
  behind the target camera (``z ≤ 0``) are discarded. The reference writes them all with
  ``tensor[idx] = z`` (last write wins on CPU, undefined order on CUDA) and does not test z,
  so a point behind the camera can overwrite a valid one. ``zbuffer=False`` emulates the
  CPU order exactly (the last point in raster order wins).
* ``empty_as_zero=False``: a direction with no comparable pixel is left out of the mean and
  counted (:attr:`TAE.empty_directions`). The reference returns 0 for it and still divides by
  ``2(T−1)``, which lowers TAE. ``empty_as_zero=True`` reproduces that.
* ``shared_intrinsics=False``: each frame's own intrinsics. The reference uses frame ``k``'s
  ``K`` for both directions of pair ``(k, k+1)`` (no difference for a fixed camera).
* ``variant="eq4"``: GemDepth's Eq. 4 normalisation ``1 / (2(T−2))`` instead of
  ``1 / (2(T−1))`` (empty directions count as 0 there; needs ``T ≥ 3``).

:meth:`TAE.vda_reference` builds the metric with all reference quirks on.

TCD (GemDepth Eq. 5-6): back-project the aligned depth of frames ``t`` and ``t+1``, move both
into frame 0's camera coordinates with the ground-truth poses (``E_0 · E_t⁻¹``) and take the
symmetric mean squared nearest-neighbour distance::

    d_CD(P, Q) = mean_{x∈P} min_{y∈Q} ‖x−y‖² + mean_{y∈Q} min_{x∈P} ‖x−y‖²
    TCD_seq    = 1/(T−1) Σ_t d_CD(P_t, P_{t+1})                   (m²)

Nearest neighbours are exact (:mod:`gemdepth.metrics.neighbours`); ``num_points`` subsamples
each frame with a fixed seed (strongly advised for full-resolution frames: exact search is
quadratic in the points per frame). A subsampled TCD has a floor set by the sampling
density (two samples of the same surface are not the same points), so compare methods only at
the same ``num_points``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from gemdepth.geometry import invert_rigid
from gemdepth.metrics.align import AlignMode
from gemdepth.metrics.base import AlignedSequenceMetric, check_sequence_inputs, log, sequence_label, split_sequences
from gemdepth.metrics.neighbours import mutual_nearest_sq_dist, nearest_sq_dist_pruned
from gemdepth.metrics.points import pixel_points, sample_pixels

__all__ = ["TAE", "TCD", "tae_errors", "chamfer_pairs"]


# ----------------------------------------------------------------------------- TAE core
def tae_errors(
    depth: Tensor,
    intrinsics: Tensor,
    extrinsics: Tensor,
    mask: Tensor | None = None,
    *,
    mask_mode: Literal["none", "target", "both"] = "none",
    zbuffer: bool = True,
    shared_intrinsics: bool = False,
    pair_chunk: int = 8,
) -> tuple[Tensor, Tensor]:
    """Relative reprojection errors of every consecutive pair, both directions.

    Args:
        depth: ``(T, H, W)`` depth (already aligned), metres.
        intrinsics: ``(T, 3, 3)``; extrinsics: ``(T, 4, 4)`` world-to-camera.
        mask: bool ``(T, H, W)``, used per ``mask_mode``: ``target`` restricts the compared
            target pixels (the reference's ``--mask``), ``both`` also the projected source
            pixels, ``none`` ignores it (the published ScanNet protocol).
        zbuffer, shared_intrinsics: see the module docstring.
        pair_chunk: frame pairs projected at once (memory ≈ ``pair_chunk · H · W · 200`` B).

    Returns:
        ``errors`` float64 ``(T−1, 2)`` (``[:, 0]`` is ``k → k+1``, ``[:, 1]`` is ``k+1 → k``;
        0 where empty) and ``empty`` bool ``(T−1, 2)`` (no comparable pixel).
    """
    frames, height, width = depth.shape
    pairs = frames - 1
    errors = torch.zeros(max(pairs, 0), 2, dtype=torch.float64, device=depth.device)
    empty = torch.zeros(max(pairs, 0), 2, dtype=torch.bool, device=depth.device)
    if pairs <= 0:
        return errors, empty
    use_mask = mask is not None and mask_mode != "none"
    if mask_mode not in ("none", "target", "both"):
        raise ValueError(f"mask_mode must be 'none', 'target' or 'both', got {mask_mode!r}")
    intr = intrinsics.double()
    extr = extrinsics.double()
    hw = height * width
    v_grid, u_grid = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=depth.device),
        torch.arange(width, dtype=torch.float64, device=depth.device),
        indexing="ij",
    )
    u_grid, v_grid = u_grid.reshape(1, hw), v_grid.reshape(1, hw)  # pixel centres
    for a in range(0, pairs, max(1, pair_chunk)):
        ks = torch.arange(a, min(a + pair_chunk, pairs), device=depth.device)
        src = torch.cat([ks, ks + 1])
        dst = torch.cat([ks + 1, ks])
        bsz = src.numel()
        k_src = intr[src]
        k_dst = intr[torch.cat([ks, ks])] if shared_intrinsics else intr[dst]
        if shared_intrinsics:
            k_src = k_dst
        rel = extr[dst] @ invert_rigid(extr[src])
        # K_t (R · z K_s⁻¹ p + t) = z · (K_t R K_s⁻¹) p + K_t t: one fused 3×3 map per pair,
        # applied row by row in place, instead of geometry.backproject/transform_points/
        # project, which broadcast a 3×3 matmul per pixel (≈5× slower on CPU, more memory).
        lin_map = k_dst @ rel[:, :3, :3] @ torch.linalg.inv(k_src)
        offset = (k_dst @ rel[:, :3, 3:4]).squeeze(-1)
        z_src = depth[src].double().reshape(bsz, hw)
        rows = []
        for r in range(3):  # in-place row by row: the fewest passes over B·H·W float64 values
            row = torch.addcmul(lin_map[:, r, 2:3].expand(bsz, hw), lin_map[:, r, 0:1], u_grid.expand(bsz, hw))
            row.addcmul_(lin_map[:, r, 1:2], v_grid).mul_(z_src).add_(offset[:, r : r + 1])
            rows.append(row)
        u, v, z = rows
        u.div_(z).round_()
        v.div_(z).round_()
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)  # NaN/inf compare False
        if zbuffer:
            inside &= z > 0
        if use_mask and mask_mode == "both":
            inside &= mask[src].reshape(bsz, hw)
        # flat target index; points that land nowhere go to a dump slot at the end
        base = (torch.arange(bsz, device=depth.device, dtype=torch.float64) * hw)[:, None]
        target_lin = torch.where(inside, v * width + u + base, float(bsz * hw)).long().flatten()
        if zbuffer:
            proj = torch.full((bsz * hw + 1,), float("inf"), dtype=torch.float64, device=depth.device)
            proj.scatter_reduce_(0, target_lin, z.flatten(), reduce="amin")
            proj = proj[:-1]
            proj = torch.where(torch.isinf(proj), 0.0, proj)
        else:  # reference: the last point in raster order wins, whatever its z
            winner = torch.full((bsz * hw + 1,), -1, dtype=torch.long, device=depth.device)
            winner.scatter_reduce_(0, target_lin, torch.arange(bsz * hw, device=depth.device), reduce="amax")
            winner = winner[:-1]
            proj = torch.where(winner >= 0, z.flatten()[winner.clamp_min(0)], 0.0)
        proj = proj.view(bsz, hw)
        target = depth[dst].double().reshape(bsz, hw)
        ok = (proj > 0) & (target > 0)
        if use_mask:
            ok &= mask[dst].reshape(bsz, hw)
        count = ok.sum(1)
        total = (target - proj).abs_().div_(target).masked_fill_(~ok, 0.0).sum(1)  # |d_t − p| / d_t
        err = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
        n = ks.numel()
        errors[ks, 0], errors[ks, 1] = err[:n], err[n:]
        empty[ks, 0], empty[ks, 1] = count[:n] == 0, count[n:] == 0
    return errors, empty


class TAE(AlignedSequenceMetric):
    """Temporal alignment error ×100 (Video Depth Anything benchmark; GemDepth Eq. 4).

    Formula, quirks and flags: see :mod:`gemdepth.metrics.temporal`. ``compute()`` returns the
    mean of per-sequence TAE (float64; NaN before any sequence was scored). Counters:
    :attr:`directions` (directions averaged), :attr:`empty_directions`,
    :attr:`sequences_skipped` (fewer than 2 frames, 3 for ``eq4``, or no valid pixel).

    Args:
        alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames: as
            :class:`~gemdepth.metrics.depth.DepthMetrics` (the alignment is the same).
        variant: ``vda`` (``1/(2(T−1))``, published numbers) or ``eq4`` (``1/(2(T−2))``).
        zbuffer, empty_as_zero, shared_intrinsics: correct behaviour by default; see module.
        mask: ``none`` (protocol: every pixel), ``target`` or ``both`` — which pixels the
            ground-truth validity mask (``min_depth < gt < max_depth`` ∧ ``valid``) restricts.
        pair_chunk: frame pairs projected at once.
    """

    higher_is_better = False
    _COUNTERS = {
        "sequences_scored": "tae_sequences", "sequences_skipped": "tae_sequences_skipped",
        "directions": "tae_directions", "empty_directions": "tae_empty_directions",
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
        variant: Literal["vda", "eq4"] = "vda",
        zbuffer: bool = True,
        empty_as_zero: bool = False,
        shared_intrinsics: bool = False,
        mask: Literal["none", "target", "both"] = "none",
        pair_chunk: int = 8,
        chunk_frames: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if variant not in ("vda", "eq4"):
            raise ValueError(f"variant must be 'vda' or 'eq4', got {variant!r}")
        if mask not in ("none", "target", "both"):
            raise ValueError(f"mask must be 'none', 'target' or 'both', got {mask!r}")
        self._init_alignment(alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames)
        self.variant = variant
        self.zbuffer = zbuffer
        self.empty_as_zero = empty_as_zero
        self.shared_intrinsics = shared_intrinsics
        self.mask_mode = mask
        self.pair_chunk = pair_chunk
        self._add_sum_state("tae_sum", "tae_sequences", "tae_directions", "tae_empty_directions", "tae_sequences_skipped")

    @classmethod
    def vda_reference(cls, **kwargs: Any) -> TAE:
        """TAE with every quirk of the reference ``eval_tae.py`` (to reproduce published tables)."""
        kwargs = {"zbuffer": False, "empty_as_zero": True, "shared_intrinsics": True, **kwargs}
        return cls(**kwargs)

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
        """Score one sequence (or a ``(B, T, H, W)`` batch).

        Args:
            pred: raw relative disparity ``(T, H, W)`` (or depth with ``pred_kind="depth"``).
            gt_depth: metres ``(T, H, W)``, used for the alignment (and the optional mask).
            valid: optional bool ``(T, H, W)`` restricting valid ground truth.
            intrinsics: ground-truth ``(T, 3, 3)`` pixels; extrinsics: ``(T, 4, 4)``
                world-to-camera. Both required.
            name: sequence name for messages.
        """
        for p, g, v, k, e, seq_name in split_sequences(pred, gt_depth, valid, intrinsics, extrinsics, name=name):
            check_sequence_inputs(p, g, v, k, e, name=seq_name, need_cameras="TAE",
                                  allow_resize=self.align_config.resize_pred)
            self._update_one(p, g, v, k, e, seq_name)

    def _update_one(self, pred: Tensor, gt: Tensor, valid: Tensor | None, intr: Tensor, extr: Tensor,
                    name: str | None) -> None:
        frames = gt.shape[0]
        need = 3 if self.variant == "eq4" else 2
        if frames < need:
            log.warning("%s: %d frame(s); TAE (%s) needs at least %d; skipped", sequence_label(name), frames,
                        self.variant, need)
            self._add("tae_sequences_skipped", 1)
            return
        aligned = self._aligned(pred, gt, valid, name, "tae_sequences_skipped")
        if aligned is None:
            return
        errors, empty = tae_errors(
            aligned.depth, intr, extr, aligned.valid, mask_mode=self.mask_mode, zbuffer=self.zbuffer,
            shared_intrinsics=self.shared_intrinsics, pair_chunk=self.pair_chunk,
        )
        n_empty = int(empty.sum())
        if n_empty:
            log.info("%s: %d of %d TAE directions have no comparable pixel", sequence_label(name), n_empty, empty.numel())
        if self.variant == "eq4":
            denom = 2 * (frames - 2)
            counted = errors.numel()
        elif self.empty_as_zero:
            denom = counted = errors.numel()
        else:
            denom = counted = errors.numel() - n_empty
        if denom == 0:
            log.warning("%s: no TAE direction had a comparable pixel; skipped", sequence_label(name))
            self._add("tae_sequences_skipped", 1)
            self._add("tae_empty_directions", n_empty)
            return
        self._add("tae_sum", 100.0 * errors.sum() / denom)
        self._add("tae_sequences", 1)
        self._add("tae_directions", counted)
        self._add("tae_empty_directions", n_empty)

    def compute(self) -> Tensor:
        """Mean per-sequence TAE (×100)."""
        return self._mean(self.tae_sum, self.tae_sequences)

    @property
    def directions(self) -> int:
        return int(self.tae_directions)

    @property
    def empty_directions(self) -> int:
        return int(self.tae_empty_directions)

    @property
    def sequences_skipped(self) -> int:
        return int(self.tae_sequences_skipped)


# ----------------------------------------------------------------------------- TCD core
def chamfer_pairs(
    points: Tensor,
    sel: Tensor,
    *,
    nn: Literal["auto", "brute", "pruned"] = "auto",
    brute_force_max: int = 1 << 26,
    chunk_elems: int = 1 << 20,
    pair_chunk: int = 16,
) -> tuple[Tensor, Tensor]:
    """Chamfer distance ``d_CD(P_t, P_{t+1})`` of consecutive clouds (Eq. 6).

    Args:
        points: float64 ``(F, N, 3)`` clouds in one frame of reference (padded).
        sel: bool ``(F, N)`` real points.
        nn: ``brute`` (batched over pairs, one distance block for both directions),
            ``pruned`` (per pair, Morton blocks) or ``auto`` (brute while ``N² ≤ brute_force_max``).

    Returns:
        float64 ``(F−1,)`` distances (0 where empty) and bool ``(F−1,)`` empty (a cloud had no
        point).
    """
    frames, n = points.shape[0], points.shape[1]
    pairs = max(frames - 1, 0)
    dist = torch.zeros(pairs, dtype=torch.float64, device=points.device)
    counts = sel.sum(1)
    empty = (counts[:-1] == 0) | (counts[1:] == 0) if pairs else torch.zeros(0, dtype=torch.bool)
    use_brute = nn == "brute" or (nn == "auto" and n * n <= brute_force_max)
    if nn not in ("auto", "brute", "pruned"):
        raise ValueError(f"nn must be 'auto', 'brute' or 'pruned', got {nn!r}")
    if use_brute:
        for a in range(0, pairs, max(1, pair_chunk)):
            ks = torch.arange(a, min(a + pair_chunk, pairs), device=points.device)
            d_fwd, d_bwd = mutual_nearest_sq_dist(points[ks], points[ks + 1], sel[ks], sel[ks + 1],
                                                  chunk_elems=chunk_elems)
            fwd = torch.where(sel[ks], d_fwd, 0.0).sum(1) / sel[ks].sum(1).clamp_min(1)
            bwd = torch.where(sel[ks + 1], d_bwd, 0.0).sum(1) / sel[ks + 1].sum(1).clamp_min(1)
            dist[ks] = fwd + bwd
    else:
        # one pair at a time: pruned search works on ragged full-resolution clouds (~1e5 points
        # each), which already saturate the cores; batching pairs would only pad them
        for k in range(pairs):
            if bool(empty[k]):
                continue
            p, q = points[k][sel[k]], points[k + 1][sel[k + 1]]
            dist[k] = (nearest_sq_dist_pruned(p, q, chunk_elems=chunk_elems).mean()
                       + nearest_sq_dist_pruned(q, p, chunk_elems=chunk_elems).mean())
    dist = torch.where(empty, torch.zeros_like(dist), dist)
    return dist, empty


class TCD(AlignedSequenceMetric):
    """Temporal Chamfer distance (GemDepth Eq. 5-6), m², mean over sequences.

    Formula: see :mod:`gemdepth.metrics.temporal`. Pairs where either frame has no point are
    left out and counted (:attr:`empty_pairs`); a sequence with no scorable pair (or < 2
    frames, or no valid pixel) is skipped and counted (:attr:`sequences_skipped`).

    Args:
        alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames: as
            :class:`~gemdepth.metrics.depth.DepthMetrics`.
        num_points: fixed-seed uniform subsample of at most this many points per frame
            (``None``: every point; cost grows with its square).
        seed: subsampling seed (the choice depends only on seed and frame index).
        points: ``valid`` (pixels with valid ground truth, default) or ``all`` pixels.
        nn: nearest-neighbour search, ``auto``/``brute``/``pruned`` (all exact).
        brute_force_max: ``auto`` uses brute force while ``N² ≤`` this (2²⁶: up to 8192
            points per frame, where the two break even on CPU; above, the pruned search wins).
        chunk_elems: largest distance block held in memory (memory bound of the search).
        pair_chunk: frame pairs searched at once with brute force.
    """

    higher_is_better = False
    _COUNTERS = {
        "sequences_scored": "tcd_sequences", "sequences_skipped": "tcd_sequences_skipped",
        "pairs": "tcd_pairs", "empty_pairs": "tcd_empty_pairs",
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
        num_points: int | None = None,
        seed: int = 0,
        points: Literal["valid", "all"] = "valid",
        nn: Literal["auto", "brute", "pruned"] = "auto",
        brute_force_max: int = 1 << 26,
        chunk_elems: int = 1 << 20,
        pair_chunk: int = 16,
        chunk_frames: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if points not in ("valid", "all"):
            raise ValueError(f"points must be 'valid' or 'all', got {points!r}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive or None, got {num_points}")
        self._init_alignment(alignment, max_depth, min_depth, eps, pred_kind, resize_pred, chunk_frames)
        self.num_points = num_points
        self.seed = seed
        self.points = points
        self.nn = nn
        self.brute_force_max = brute_force_max
        self.chunk_elems = chunk_elems
        self.pair_chunk = pair_chunk
        self._add_sum_state("tcd_sum", "tcd_sequences", "tcd_pairs", "tcd_empty_pairs", "tcd_sequences_skipped")

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
        """Score one sequence (or a batch); arguments as :meth:`TAE.update` (cameras required)."""
        for p, g, v, k, e, seq_name in split_sequences(pred, gt_depth, valid, intrinsics, extrinsics, name=name):
            check_sequence_inputs(p, g, v, k, e, name=seq_name, need_cameras="TCD",
                                  allow_resize=self.align_config.resize_pred)
            self._update_one(p, g, v, k, e, seq_name)

    def _update_one(self, pred: Tensor, gt: Tensor, valid: Tensor | None, intr: Tensor, extr: Tensor,
                    name: str | None) -> None:
        frames = gt.shape[0]
        if frames < 2:
            log.warning("%s: TCD needs at least 2 frames; skipped", sequence_label(name))
            self._add("tcd_sequences_skipped", 1)
            return
        aligned = self._aligned(pred, gt, valid, name, "tcd_sequences_skipped")
        if aligned is None:
            return
        to_first = extr[:1].double() @ invert_rigid(extr.double())  # camera t → camera 0
        step = max(2, self.align_config.chunk_frames)
        dists, empties = [], []
        for a in range(0, frames - 1, step - 1):  # windows overlap by one frame
            b = min(a + step, frames)
            mask = aligned.valid[a:b] if self.points == "valid" else torch.ones_like(aligned.valid[a:b])
            idx, sel = sample_pixels(mask, self.num_points, seed=self.seed, first_frame=a)
            pts = pixel_points(aligned.depth[a:b], idx, intr[a:b], to_first[a:b])
            d, e = chamfer_pairs(pts, sel, nn=self.nn, brute_force_max=self.brute_force_max,
                                 chunk_elems=self.chunk_elems, pair_chunk=self.pair_chunk)
            dists.append(d)
            empties.append(e)
        dist, empty = torch.cat(dists), torch.cat(empties)
        n_empty = int(empty.sum())
        scored = dist.numel() - n_empty
        self._add("tcd_empty_pairs", n_empty)
        if scored == 0:
            log.warning("%s: no frame pair with points on both sides; TCD skipped", sequence_label(name))
            self._add("tcd_sequences_skipped", 1)
            return
        if n_empty:
            log.info("%s: %d of %d TCD pairs have an empty frame", sequence_label(name), n_empty, dist.numel())
        self._add("tcd_sum", dist.sum() / scored)
        self._add("tcd_sequences", 1)
        self._add("tcd_pairs", scored)

    def compute(self) -> Tensor:
        """Mean per-sequence TCD (m²)."""
        return self._mean(self.tcd_sum, self.tcd_sequences)

    @property
    def empty_pairs(self) -> int:
        return int(self.tcd_empty_pairs)

    @property
    def sequences_skipped(self) -> int:
        return int(self.tcd_sequences_skipped)
