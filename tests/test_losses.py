"""Losses against independent NumPy/SciPy computations on small tensors, plus their invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gemdepth.losses import (
    GemDepthLoss,
    camera_loss,
    depth_to_disparity,
    gradient_matching_loss,
    normalize_gt_trajectory,
    normalize_median_mad,
    ssi_loss,
    temporal_gradient_matching_loss,
    trimmed_mae,
)

# ----------------------------------------------------------------------------- references


def _ref_normalise(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    v = np.sort(x[m])
    med = v[(len(v) - 1) // 2]  # lower median, as torch
    mad = max(np.abs(x[m] - med).mean(), 1e-6)
    return (x - med) / mad


def _ref_ssi(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, trim: float) -> float:
    total, count = 0.0, 0
    for p, t, m in zip(pred.reshape(-1, *pred.shape[-2:]), target.reshape(-1, *pred.shape[-2:]),
                       mask.reshape(-1, *pred.shape[-2:])):
        if m.sum() == 0:
            continue
        r = np.sort(np.abs(_ref_normalise(p, m) - _ref_normalise(t, m))[m])
        keep = int(np.floor(len(r) * (1 - trim)))
        total += r[:keep].sum()
        count += m.sum()
    return total / count


def _ref_grad(diff: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    h, w = diff.shape
    s = 0.0
    for y in range(h):
        for x in range(w):
            if x + 1 < w and mask[y, x] and mask[y, x + 1]:
                s += abs(diff[y, x + 1] - diff[y, x])
            if y + 1 < h and mask[y, x] and mask[y + 1, x]:
                s += abs(diff[y + 1, x] - diff[y, x])
    return s, int(mask.sum())


def _ref_gm(pred, target, mask, scales=4) -> float:
    total = 0.0
    for k in range(scales):
        step = 2**k
        s, c = 0.0, 0
        for p, t, m in zip(pred, target, mask):
            d = (_ref_normalise(p, m) - _ref_normalise(t, m))
            gs, gc = _ref_grad(d[::step, ::step], m[::step, ::step])
            s += gs
            c += gc
        total += s / c
    return total


def _ref_tgm(pred, target, mask, thr=0.05) -> float:
    # one clip per batch entry; stride 1 only (the default)
    num, den = 0.0, 0
    for p, t, m in zip(pred, target, mask):
        a = np.stack([p[m], np.ones(m.sum())], 1)
        sc, sh = np.linalg.lstsq(a, t[m], rcond=None)[0]
        p = sc * p + sh
        for i in range(p.shape[0] - 1):
            rng = t[i + 1][m[i + 1]].max() - t[i + 1][m[i + 1]].min()
            dt = t[i + 1] - t[i]
            sel = m[i] & m[i + 1] & (np.abs(dt) < thr * rng)
            num += np.abs((p[i + 1] - p[i]) - dt)[sel].sum()
            den += sel.sum()
    return num / den


def _huber(x: np.ndarray, d: float = 1.0) -> np.ndarray:
    a = np.abs(x)
    return np.where(a < d, 0.5 * a**2, d * (a - 0.5 * d))


def _ref_gt_encoding(extr: np.ndarray, intr: np.ndarray, h: int, w: int) -> np.ndarray:
    """(T,4,4) world-to-camera -> (T,9) relative to frame 0, translations / mean norm."""
    rel = extr @ np.linalg.inv(extr[0])
    t = rel[:, :3, 3]
    t = t / np.linalg.norm(t, axis=1).mean()
    q = Rotation.from_matrix(rel[:, :3, :3]).as_quat()  # xyzw
    q = np.where(q[:, 3:4] < 0, -q, q)
    fov_h = 2 * np.arctan(h / 2 / intr[:, 1, 1])
    fov_w = 2 * np.arctan(w / 2 / intr[:, 0, 0])
    return np.concatenate([t, q, fov_h[:, None], fov_w[:, None]], 1)


def _random_poses(t: int, rng: np.random.Generator) -> np.ndarray:
    rots = Rotation.from_rotvec(rng.normal(scale=0.4, size=(t, 3))).as_matrix()
    e = np.tile(np.eye(4), (t, 1, 1))
    e[:, :3, :3] = rots
    e[:, :3, 3] = rng.normal(scale=2.0, size=(t, 3))
    return e


def _intrinsics(t: int, h: int, w: int) -> np.ndarray:
    k = np.array([[40.0, 0, w / 2], [0, 38.0, h / 2], [0, 0, 1]])
    return np.tile(k, (t, 1, 1))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def clip():
    g = torch.Generator().manual_seed(3)
    b, t, h, w = 2, 4, 12, 10
    depth = torch.rand(b, t, h, w, generator=g) * 9 + 1
    valid = torch.rand(b, t, h, w, generator=g) > 0.2
    pred = torch.rand(b, t, h, w, generator=g) + 0.1
    return pred, depth, valid


# ----------------------------------------------------------------------------- tests


def test_disparity_targets_and_invalid_pixels():
    depth = torch.tensor([[[[2.0, 0.0], [float("nan"), 4.0]]]])
    valid = torch.ones_like(depth, dtype=torch.bool)
    disp, m = depth_to_disparity(depth, valid, torch.tensor([False]))
    assert m.tolist() == [[[[True, False], [False, True]]]]
    assert torch.allclose(disp, torch.tensor([[[[0.5, 0.0], [0.0, 0.25]]]]))
    disp2, _ = depth_to_disparity(depth, valid, torch.tensor([True]))
    assert torch.allclose(disp2, torch.tensor([[[[2.0, 0.0], [0.0, 4.0]]]]))


@pytest.mark.parametrize("trim", [0.0, 0.2])
def test_ssi_matches_reference(clip, trim):
    pred, depth, valid = clip
    target, mask = depth_to_disparity(depth, valid)
    got = ssi_loss(pred, target, mask, trim=trim).item()
    ref = _ref_ssi(pred.numpy(), target.numpy(), mask.numpy(), trim)
    assert got == pytest.approx(ref, rel=1e-5)


def test_trimmed_mae_drops_largest_residuals():
    res = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 100.0]]])
    mask = torch.ones_like(res, dtype=torch.bool)
    assert trimmed_mae(res, mask, 0.2).item() == pytest.approx(10.0 / 5)
    assert trimmed_mae(res, mask, 0.0).item() == pytest.approx(110.0 / 5)
    with pytest.raises(ValueError, match="trim"):
        trimmed_mae(res, mask, 1.0)


def test_gm_matches_reference(clip):
    pred, depth, valid = clip
    target, mask = depth_to_disparity(depth, valid)
    p, t, m = pred[0], target[0], mask[0]
    got = gradient_matching_loss(normalize_median_mad(p, m), normalize_median_mad(t, m), m).item()
    assert got == pytest.approx(_ref_gm(p.numpy(), t.numpy(), m.numpy()), rel=1e-5)


def test_tgm_matches_reference():
    g = torch.Generator().manual_seed(5)
    target = 1.0 + torch.rand(2, 5, 8, 8, generator=g).cumsum(1) * 0.02  # small changes: mostly kept
    target[:, 3, :2] += 1.0  # a moving object: excluded by the threshold
    pred = target + 0.01 * torch.randn(2, 5, 8, 8, generator=g)
    mask = torch.rand(2, 5, 8, 8, generator=g) > 0.1
    got = temporal_gradient_matching_loss(pred, target, mask).item()
    ref = _ref_tgm(pred.double().numpy(), target.double().numpy(), mask.numpy())
    assert got == pytest.approx(ref, rel=1e-4)
    assert got > 0


def test_depth_losses_invariant_to_scale_and_shift(clip):
    pred, depth, valid = clip
    batch = {"depth": depth, "valid": valid, "is_disparity": torch.zeros(2, dtype=torch.bool)}
    loss = GemDepthLoss(gamma=0.0)
    a = loss(pred, batch)
    b = loss(3.7 * pred + 0.8, batch)
    for key in ("ssi", "gm", "tgm", "total"):
        assert a[key].item() > 0
        assert b[key].item() == pytest.approx(a[key].item(), rel=1e-4), key


def test_depth_losses_zero_for_perfect_prediction(clip):
    _, depth, valid = clip
    target, _ = depth_to_disparity(depth, valid)
    batch = {"depth": depth, "valid": valid}
    out = GemDepthLoss(gamma=0.0)(2.5 * target + 0.3, batch)
    for key in ("ssi", "gm", "tgm", "total"):
        assert out[key].item() == pytest.approx(0.0, abs=1e-5), key


def test_depth_loss_gradients_flow(clip):
    pred, depth, valid = clip
    pred = pred.clone().requires_grad_(True)
    out = GemDepthLoss(gamma=0.0)(pred, {"depth": depth, "valid": valid})
    out["total"].backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert (pred.grad[~valid] == 0).all()


def test_no_valid_pixels_gives_zero_not_nan():
    pred = torch.rand(1, 3, 6, 6, requires_grad=True)
    depth = torch.zeros(1, 3, 6, 6)
    out = GemDepthLoss(gamma=0.0)(pred, {"depth": depth, "valid": depth > 0})
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert torch.isfinite(pred.grad).all()


def test_camera_loss_matches_reference_and_iteration_weights():
    rng = np.random.default_rng(0)
    b, t, h, w = 2, 5, 28, 42
    extr = np.stack([_random_poses(t, rng) for _ in range(b)])
    intr = np.stack([_intrinsics(t, h, w)] * b)
    gt = np.stack([_ref_gt_encoding(e, k, h, w) for e, k in zip(extr, intr)])
    preds = [torch.from_numpy(gt + rng.normal(scale=s, size=gt.shape)).float() for s in (0.9, 0.5, 0.1)]
    out = camera_loss(preds, torch.from_numpy(extr).float(), torch.from_numpy(intr).float(), (h, w),
                      gamma=0.6, fov_weight=0.5)
    ref_t = ref_r = ref_f = 0.0
    for i, p in enumerate(preds):
        wgt = 0.6 ** (2 - i)
        d = p.double().numpy() - gt
        ref_t += wgt * _huber(d[..., :3]).mean()
        ref_r += wgt * _huber(d[..., 3:7]).mean()
        ref_f += wgt * _huber(d[..., 7:]).mean()
    ref_t, ref_r, ref_f = ref_t / 3, ref_r / 3, ref_f / 3
    assert out["trans"].item() == pytest.approx(ref_t, rel=1e-4)
    assert out["rot"].item() == pytest.approx(ref_r, rel=1e-4)
    assert out["fov"].item() == pytest.approx(ref_f, rel=1e-4)
    assert out["cam"].item() == pytest.approx(ref_t + ref_r + 0.5 * ref_f, rel=1e-4)
    l1 = camera_loss(preds, torch.from_numpy(extr).float(), torch.from_numpy(intr).float(), (h, w),
                     loss_type="l1")
    ref_l1_cam = sum(0.6 ** (2 - i) * (np.abs(p.double().numpy() - gt)[..., :3].mean()
                                        + np.abs(p.double().numpy() - gt)[..., 3:7].mean())
                     for i, p in enumerate(preds)) / 3
    assert l1["cam"].item() == pytest.approx(ref_l1_cam, rel=1e-4)


def test_camera_loss_zero_for_exact_poses_and_similarity_invariant():
    rng = np.random.default_rng(1)
    t, h, w = 6, 28, 28
    extr = _random_poses(t, rng)
    intr = _intrinsics(t, h, w)
    gt = torch.from_numpy(_ref_gt_encoding(extr, intr, h, w)).float()[None]
    e = torch.from_numpy(extr).float()[None]
    k = torch.from_numpy(intr).float()[None]
    assert camera_loss([gt], e, k, (h, w), fov_weight=1.0)["cam"].item() == pytest.approx(0, abs=1e-6)
    # a global similarity of the world: X' = s·Q·X + u  ->  E' = [R Qᵀ | s·t − R Qᵀ u]
    s, q, u = 3.3, Rotation.from_rotvec([0.3, -1.0, 0.5]).as_matrix(), np.array([4.0, -2.0, 7.0])
    moved = extr.copy()
    moved[:, :3, :3] = extr[:, :3, :3] @ q.T
    moved[:, :3, 3] = s * extr[:, :3, 3] - (extr[:, :3, :3] @ q.T @ u)
    e2 = torch.from_numpy(moved).float()[None]
    assert torch.allclose(normalize_gt_trajectory(e2), normalize_gt_trajectory(e), atol=1e-4)
    assert camera_loss([gt], e2, k, (h, w))["cam"].item() == pytest.approx(0, abs=1e-5)
    # the official "max" normalisation gives unit largest translation
    tmax = normalize_gt_trajectory(e, "max")[..., :3, 3].norm(dim=-1)
    assert tmax.max().item() == pytest.approx(1.0, rel=1e-5)


def test_camera_loss_ignores_pose_free_clips_but_keeps_graph():
    rng = np.random.default_rng(2)
    t, h, w = 4, 14, 14
    extr = torch.from_numpy(np.stack([_random_poses(t, rng), np.tile(np.eye(4), (t, 1, 1))])).float()
    intr = torch.from_numpy(np.stack([_intrinsics(t, h, w)] * 2)).float()
    gt = torch.from_numpy(_ref_gt_encoding(extr[0].double().numpy(), intr[0].double().numpy(), h, w)).float()
    pred = torch.stack([gt, torch.randn(t, 9) * 5]).requires_grad_(True)
    out = camera_loss([pred], extr, intr, (h, w), clip_weight=torch.tensor([1.0, 0.0]))
    assert out["cam"].item() == pytest.approx(0.0, abs=1e-6)
    out["cam"].backward()
    assert pred.grad is not None and (pred.grad[1] == 0).all()
    none = camera_loss([pred], extr, intr, (h, w), clip_weight=torch.tensor([0.0, 0.0]))
    assert none["cam"].item() == 0.0


def test_total_is_weighted_sum():
    rng = np.random.default_rng(3)
    b, t, h, w = 2, 4, 14, 14
    depth = torch.rand(b, t, h, w) * 5 + 1
    extr = torch.from_numpy(np.stack([_random_poses(t, rng) for _ in range(b)])).float()
    intr = torch.from_numpy(np.stack([_intrinsics(t, h, w)] * b)).float()
    batch = {"depth": depth, "valid": depth > 0, "extrinsics": extr, "intrinsics": intr,
             "has_pose": torch.tensor([True, False]), "is_disparity": torch.tensor([False, False])}
    pose = [torch.randn(b, t, 9), torch.randn(b, t, 9)]
    out = GemDepthLoss()(torch.rand(b, t, h, w), batch, pose)
    expect = out["ssi"] + 0.5 * out["gm"] + 10 * out["tgm"] + 0.2 * out["cam"]
    assert out["total"].item() == pytest.approx(expect.item(), rel=1e-6)
    assert out["cam"].item() > 0


def test_unknown_loss_option_is_named():
    with pytest.raises(ValueError, match="unknown loss option.*'gama'"):
        GemDepthLoss(gama=0.1)
