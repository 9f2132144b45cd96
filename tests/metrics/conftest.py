"""Independent NumPy references and synthetic scenes for the metric tests.

Nothing here imports :mod:`gemdepth.metrics`: the references are written from the protocol's
description (VDA benchmark, GemDepth Appendix A.3) with plain NumPy/SciPy so the tests compare
two independent implementations.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation


# ----------------------------------------------------------------------------- scenes
def intrinsics(height: int, width: int, focal: float | None = None) -> np.ndarray:
    f = focal if focal is not None else 0.9 * width
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f * 1.05, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def random_extrinsics(frames: int, rng: np.random.Generator, step: float = 0.08, turn: float = 3.0) -> np.ndarray:
    """World-to-camera poses of a smooth random walk (translation ``step`` m, ``turn`` deg per frame)."""
    out = np.zeros((frames, 4, 4))
    centre = np.zeros(3)
    rotvec = np.zeros(3)
    for t in range(frames):
        r_c2w = Rotation.from_rotvec(rotvec).as_matrix()
        out[t, :3, :3] = r_c2w.T
        out[t, :3, 3] = -r_c2w.T @ centre
        out[t, 3, 3] = 1.0
        centre = centre + rng.normal(0, step, 3) * np.array([1.0, 0.5, 1.0])
        rotvec = rotvec + np.deg2rad(rng.normal(0, turn, 3))
    return out


def render_room(extrinsics: np.ndarray, K: np.ndarray, height: int, width: int,
                box=((-3.0, 3.0), (-2.0, 2.0), (-2.0, 7.0))) -> np.ndarray:
    """Exact z-depth of the inside of an axis-aligned box seen by each camera."""
    frames = extrinsics.shape[0]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([u, v, np.ones_like(u)], -1)
    rays_c = pix @ np.linalg.inv(K).T  # z = 1
    depth = np.zeros((frames, height, width))
    for t in range(frames):
        rot = extrinsics[t, :3, :3]
        centre = -rot.T @ extrinsics[t, :3, 3]
        d_w = rays_c @ rot  # rows: R^T r
        best = np.full((height, width), np.inf)
        for axis in range(3):
            for bound in box[axis]:
                with np.errstate(divide="ignore", invalid="ignore"):
                    lam = (bound - centre[axis]) / d_w[..., axis]
                best = np.where((lam > 1e-9) & (lam < best), lam, best)
        depth[t] = best
    return depth


# ----------------------------------------------------------------------------- references
def protocol_align(pred: np.ndarray, gt: np.ndarray, max_depth: float, extra_valid=None):
    """The VDA benchmark's alignment, written from its description with numpy.linalg.lstsq."""
    valid = (gt > 1e-3) & (gt < max_depth)
    if extra_valid is not None:
        valid &= extra_valid
    p = np.clip(pred.astype(np.float64), 1e-3, None)
    a = np.stack([p[valid], np.ones(valid.sum())], -1)
    b = 1.0 / gt[valid].astype(np.float64)
    (scale, shift), *_ = np.linalg.lstsq(a, b, rcond=None)
    aligned = np.clip(scale * p + shift, 1e-3, None)
    depth = np.clip(1.0 / aligned, 1e-3, max_depth)
    return depth, valid, scale, shift


def per_frame_scores(depth: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict:
    """Mean over frames with valid pixels of AbsRel, δ1-3, RMSE (explicit loop over frames)."""
    rows = []
    for f in range(depth.shape[0]):
        m = valid[f]
        if not m.any():
            continue
        d, g = depth[f][m].astype(np.float64), gt[f][m].astype(np.float64)
        ratio = np.maximum(d / g, g / d)
        rows.append([np.mean(np.abs(d - g) / g), np.mean(ratio < 1.25), np.mean(ratio < 1.25**2),
                     np.mean(ratio < 1.25**3), np.sqrt(np.mean((d - g) ** 2))])
    arr = np.array(rows)
    keys = ("abs_rel", "delta1", "delta2", "delta3", "rmse")
    return {k: arr[:, i].mean() for i, k in enumerate(keys)} | {"frames": len(rows)}


def tae_direction(depth_s, depth_t, K_s, K_t, rel, zbuffer: bool, mask_t=None):
    """One direction of TAE with an explicit per-pixel loop; returns (error, n_compared)."""
    height, width = depth_s.shape
    proj = np.zeros((height, width))
    zbuf = np.full((height, width), np.inf)
    k_inv = np.linalg.inv(K_s)
    for y in range(height):
        for x in range(width):
            pt = depth_s[y, x] * (k_inv @ np.array([x, y, 1.0]))
            q = rel[:3, :3] @ pt + rel[:3, 3]
            if zbuffer and q[2] <= 0:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                u = K_t[0, 0] * q[0] / q[2] + K_t[0, 1] * q[1] / q[2] + K_t[0, 2]
                v = K_t[1, 1] * q[1] / q[2] + K_t[1, 2]
            if not (np.isfinite(u) and np.isfinite(v)):
                continue
            u, v = np.round(u), np.round(v)
            if not (0 <= u < width and 0 <= v < height):
                continue
            u, v = int(u), int(v)
            if zbuffer:
                if q[2] < zbuf[v, u]:
                    zbuf[v, u] = q[2]
                    proj[v, u] = q[2]
            else:
                proj[v, u] = q[2]  # last write in raster order wins
    ok = (proj > 0) & (depth_t > 0)
    if mask_t is not None:
        ok &= mask_t
    if not ok.any():
        return 0.0, 0
    return float(np.mean(np.abs(depth_t[ok] - proj[ok]) / depth_t[ok])), int(ok.sum())


def tae_sequence(depth, K, E, *, zbuffer=True, shared_K=False, empty_as_zero=False, eq4=False, mask=None):
    """TAE ×100 of one (aligned) sequence from :func:`tae_direction`; None if nothing counted."""
    errs, counted = [], 0
    for k in range(depth.shape[0] - 1):
        for s, t in ((k, k + 1), (k + 1, k)):
            k_s = K[k] if shared_K else K[s]
            k_t = K[k] if shared_K else K[t]
            rel = E[t] @ np.linalg.inv(E[s])
            err, n = tae_direction(depth[s], depth[t], k_s, k_t, rel, zbuffer, None if mask is None else mask[t])
            errs.append(err)
            counted += 1 if (n > 0 or empty_as_zero) else 0
    if eq4:
        return 100.0 * sum(errs) / (2 * (depth.shape[0] - 2))
    return None if counted == 0 else 100.0 * sum(errs) / counted


def backproject_world(depth, K, E, pixels=None):
    """World points of ``depth`` (H, W) pixels (all, or flat indices ``pixels``)."""
    height, width = depth.shape
    idx = np.arange(height * width) if pixels is None else np.asarray(pixels)
    u, v = idx % width, idx // width
    z = depth.reshape(-1)[idx]
    cam = (np.stack([u, v, np.ones_like(u)], -1).astype(np.float64) @ np.linalg.inv(K).T) * z[:, None]
    c2w = np.linalg.inv(E)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def chamfer(p: np.ndarray, q: np.ndarray) -> float:
    d_pq, _ = cKDTree(q).query(p)
    d_qp, _ = cKDTree(p).query(q)
    return float(np.mean(d_pq**2) + np.mean(d_qp**2))


def umeyama_np(src: np.ndarray, dst: np.ndarray):
    """Similarity (s, R, t) with s R src + t ≈ dst (Umeyama 1991), NumPy."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1
    rot = u @ d @ vt
    scale = np.trace(np.diag(sig) @ d) / (xs**2).sum(1).mean()
    return scale, rot, mu_d - scale * rot @ mu_s


def centres_np(E: np.ndarray) -> np.ndarray:
    return np.stack([-e[:3, :3].T @ e[:3, 3] for e in E])


def f1_reference(pred_pts: np.ndarray, gt_pts: np.ndarray, threshold: float):
    dp, _ = cKDTree(gt_pts).query(pred_pts)
    dr, _ = cKDTree(pred_pts).query(gt_pts)
    prec, rec = np.mean(dp < threshold), np.mean(dr < threshold)
    return (0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)), prec, rec


@pytest.fixture
def mref() -> SimpleNamespace:
    """The NumPy references and scene builders above."""
    return SimpleNamespace(
        intrinsics=intrinsics, random_extrinsics=random_extrinsics, render_room=render_room,
        protocol_align=protocol_align, per_frame_scores=per_frame_scores, tae_direction=tae_direction,
        tae_sequence=tae_sequence, backproject_world=backproject_world, chamfer=chamfer,
        umeyama_np=umeyama_np, centres_np=centres_np, f1_reference=f1_reference,
    )


@pytest.fixture
def room():
    """A consistent 6-frame 40×56 sequence of a room's far wall (little grazing floor, so
    pixel rounding barely matters): depth, K per frame, world-to-camera poses."""
    rng = np.random.default_rng(7)
    frames, height, width = 6, 40, 56
    K = np.stack([intrinsics(height, width, focal=1.2 * width)] * frames)
    E = random_extrinsics(frames, rng, step=0.08, turn=2.0)
    depth = render_room(E, K[0], height, width, box=((-4.0, 4.0), (-3.0, 3.0), (-2.0, 8.0)))
    return SimpleNamespace(depth=depth, K=K, E=E, frames=frames, height=height, width=width)
