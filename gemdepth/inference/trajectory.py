"""Chaining per-window camera predictions into one trajectory.

GEM predicts each window's cameras relative to the window's slot 0, which the windowing keeps
at video frame 0, so every window shares frame 0's rotation frame; but GEM is supervised with
translations normalised per clip (divided by their mean norm, paper §3.2), so the translation
scale jumps from window to window. The official inference simply concatenates the windows'
poses. We instead map each window into the coordinates of the chain so far with a similarity
``X_chain = s·R·X_win + t`` fitted on the frames both windows hold (the carried-over key
frames, slot 0 = video frame 0 among them):

* ``R``: the chordal mean of the per-frame rotation offsets ``R_chain,i · R_win,iᵀ`` (camera-to-
  world), projected onto SO(3). Using orientations rather than camera centres keeps ``R``
  well-defined when the overlapping centres are (nearly) collinear, as on a straight path.
* ``s, t``: least squares on the camera centres with ``R`` fixed. When the fit gives ``s ≤ 0``
  the ratio of the centres' RMS spreads is used; ``s = 1`` when the window's centres do not
  spread at all (a static camera: its scale cannot be told).
* Non-finite poses (a diverged prediction) cannot be fitted: the identity is used, a warning
  says so, and the returned similarity's ``fallback`` names the reason (so callers can count it).

Everything is float64 on the CPU (a handful of 4×4 matrices per window).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from gemdepth.geometry import invert_rigid

__all__ = ["Similarity", "fit_window_similarity", "apply_similarity"]

log = logging.getLogger(__name__)


class Similarity:
    """``X' = s·R·X + t`` (``R`` 3×3, ``t`` 3-vector, ``s`` > 0), float64. ``fallback``: why no
    similarity could be fitted and the identity stands in (``None`` for a fitted one)."""

    def __init__(
        self,
        scale: float = 1.0,
        rotation: Tensor | None = None,
        translation: Tensor | None = None,
        fallback: str | None = None,
    ) -> None:
        self.fallback = fallback
        self.scale = float(scale)
        self.rotation = torch.eye(3, dtype=torch.float64) if rotation is None else rotation.to(torch.float64)
        self.translation = torch.zeros(3, dtype=torch.float64) if translation is None else translation.to(torch.float64)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Similarity(scale={self.scale:.6g}, t={self.translation.tolist()})"


def _project_so3(m: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(3, dtype=m.dtype)
    d[-1] = torch.sign(torch.linalg.det(u @ vh))
    if d[-1] == 0:
        d[-1] = 1.0
    return u @ torch.diag(d) @ vh


def fit_window_similarity(window_extrinsics: Tensor, chain_extrinsics: Tensor, eps: float = 1e-9) -> Similarity:
    """Similarity taking a window's world (``window_extrinsics`` ``(N, 4, 4)`` world-to-camera)
    onto the chain's world (``chain_extrinsics``, the same N frames as already chained)."""
    a = invert_rigid(window_extrinsics.to(torch.float64))  # camera-to-world, window coordinates
    b = invert_rigid(chain_extrinsics.to(torch.float64))
    bad_a = int((~torch.isfinite(a).flatten(1).all(1)).sum())
    bad_b = int((~torch.isfinite(b).flatten(1).all(1)).sum())
    if bad_a or bad_b:
        reason = (
            f"non-finite camera poses on the shared frames ({bad_a} of {len(a)} in the window, "
            f"{bad_b} of {len(b)} in the chain)"
        )
        log.warning("cannot chain a window's cameras: %s; its poses are kept unchained (identity)", reason)
        return Similarity(fallback=reason)
    rot = _project_so3((b[:, :3, :3] @ a[:, :3, :3].transpose(-1, -2)).sum(0))
    ca, cb = a[:, :3, 3], b[:, :3, 3]
    ma, mb = ca.mean(0), cb.mean(0)
    xa = (ca - ma) @ rot.T  # rotated, centred window centres
    xb = cb - mb
    var_a = float((xa * xa).sum())
    var_b = float((xb * xb).sum())
    if var_a <= eps * max(var_b, 1.0):
        scale = 1.0  # the window's centres do not spread: its scale cannot be told
    else:
        scale = float((xa * xb).sum()) / var_a
        if not np.isfinite(scale) or scale <= 0:
            scale = float(np.sqrt(var_b / var_a)) if var_b > 0 else 1.0
    trans = mb - scale * (rot @ ma)
    return Similarity(scale, rot, trans)


def apply_similarity(sim: Similarity, extrinsics: Tensor) -> Tensor:
    """World-to-camera poses ``(N, 4, 4)`` re-expressed in the similarity's target world.

    The camera keeps its shape (rigid pose): rotation ``R·R_c``, centre ``s·R·c + t``.
    """
    dtype = extrinsics.dtype
    c2w = invert_rigid(extrinsics.to(torch.float64))
    out = c2w.clone()
    out[:, :3, :3] = sim.rotation @ c2w[:, :3, :3]
    out[:, :3, 3] = sim.scale * (c2w[:, :3, 3] @ sim.rotation.T) + sim.translation
    return invert_rigid(out).to(dtype)
