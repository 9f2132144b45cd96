"""ATE and F1 against NumPy/SciPy references; invariances; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gemdepth.metrics import ATE, F1Score
from gemdepth.metrics.pose import aligned_camera_to_world


def _similarity(E: np.ndarray, scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """World-to-camera poses of the same cameras in a world moved by x ↦ s·R·x + t."""
    out = E.copy()
    c2w = np.linalg.inv(E)
    for i in range(len(E)):
        new = np.eye(4)
        new[:3, :3] = rot @ c2w[i, :3, :3]
        new[:3, 3] = scale * rot @ c2w[i, :3, 3] + trans
        out[i] = np.linalg.inv(new)
    return out


def _noisy(E: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    out = E.copy()
    for i in range(len(E)):
        out[i, :3, :3] = Rotation.from_rotvec(rng.normal(0, sigma, 3)).as_matrix() @ E[i, :3, :3]
        out[i, :3, 3] += rng.normal(0, sigma, 3)
    return out


def test_ate_matches_numpy_umeyama(mref):
    rng = np.random.default_rng(0)
    metric = ATE()
    expected = []
    for i in range(3):
        gt = mref.random_extrinsics(8, rng, step=0.3)
        pred = _similarity(_noisy(gt, rng, 0.05), 0.3, Rotation.random(random_state=i).as_matrix(), rng.normal(size=3))
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), name=f"traj{i}")
        s, r, t = mref.umeyama_np(mref.centres_np(pred), mref.centres_np(gt))
        moved = s * mref.centres_np(pred) @ r.T + t
        expected.append(np.sqrt(np.mean(np.sum((moved - mref.centres_np(gt)) ** 2, 1))))
    assert float(metric.compute()) == pytest.approx(np.mean(expected), rel=1e-9)


def test_ate_is_invariant_to_a_similarity_of_the_prediction(mref):
    rng = np.random.default_rng(1)
    gt = mref.random_extrinsics(10, rng, step=0.3)
    pred = _noisy(gt, rng, 0.05)
    moved = _similarity(pred, 4.2, Rotation.random(random_state=3).as_matrix(), np.array([5.0, -2.0, 1.0]))
    a, b, exact = ATE(), ATE(), ATE()
    a.update(torch.from_numpy(pred), torch.from_numpy(gt))
    b.update(torch.from_numpy(moved), gt_extrinsics=torch.from_numpy(gt))
    exact.update(torch.from_numpy(_similarity(gt, 0.1, np.eye(3), np.ones(3))), extrinsics=torch.from_numpy(gt))
    assert float(b.compute()) == pytest.approx(float(a.compute()), rel=1e-9)
    assert float(a.compute()) > 0.01
    assert float(exact.compute()) < 1e-12


def test_ate_input_errors():
    with pytest.raises(ValueError, match="ground-truth poses"):
        ATE().update(torch.eye(4).expand(3, 4, 4))
    with pytest.raises(ValueError, match=r"gt_extrinsics must be \(3, 4, 4\)"):
        ATE().update(torch.eye(4).expand(3, 4, 4), torch.eye(4).expand(2, 4, 4), name="short")
    bad = torch.eye(4).expand(3, 4, 4).clone()
    bad[1, 0, 3] = float("inf")
    with pytest.raises(ValueError, match=r"sequence 'seq9': pred_extrinsics contain non-finite"):
        ATE().update(bad, torch.eye(4).expand(3, 4, 4), name="seq9")


def _scene(mref, seed: int):
    rng = np.random.default_rng(seed)
    frames, height, width = 5, 12, 16
    K = np.stack([mref.intrinsics(height, width, focal=14.0)] * frames)
    E = mref.random_extrinsics(frames, rng, step=0.2, turn=5.0)
    gt = mref.render_room(E, K[0], height, width)
    return gt, K, E, rng


def test_f1_matches_kdtree_reference(mref):
    metric = F1Score(threshold=0.1, max_depth=20.0, return_components=True)
    expected = []
    for seed in range(2):
        gt, K, E, rng = _scene(mref, seed)
        pred = (1.0 / gt) * (1 + rng.normal(0, 0.02, gt.shape)) + 0.05
        pred_E = _similarity(_noisy(E, rng, 0.01), 0.5, Rotation.random(random_state=seed).as_matrix(), np.ones(3))
        pred_K = K * np.array([[1.03], [1.0], [1.0]])  # a slightly wrong focal length
        metric.update(torch.from_numpy(pred).float(), torch.from_numpy(gt).float(), None, torch.from_numpy(K).float(),
                      torch.from_numpy(E).float(), pred_extrinsics=torch.from_numpy(pred_E).float(),
                      pred_intrinsics=torch.from_numpy(pred_K).float(), name=f"f1_{seed}")
        depth, valid, *_ = mref.protocol_align(pred.astype(np.float32), gt.astype(np.float32), 20.0)
        depth = depth.astype(np.float32)
        E32, pE32 = E.astype(np.float32).astype(np.float64), pred_E.astype(np.float32).astype(np.float64)
        K32, pK32 = K.astype(np.float32).astype(np.float64), pred_K.astype(np.float32).astype(np.float64)
        s, r, t = mref.umeyama_np(mref.centres_np(pE32), mref.centres_np(E32))
        gt_pts, rec_pts = [], []
        for f in range(len(gt)):
            pix = np.flatnonzero(valid[f])
            gt_pts.append(mref.backproject_world(gt[f].astype(np.float32), K32[f], E32[f], pix))
            c2w = np.linalg.inv(pE32[f])
            cam = mref.backproject_world(depth[f], pK32[f], np.eye(4), pix)  # camera frame
            rec_pts.append(cam @ (r @ c2w[:3, :3]).T + (s * r @ c2w[:3, 3] + t))
        expected.append(mref.f1_reference(np.concatenate(rec_pts), np.concatenate(gt_pts), 0.1))
    res = metric.compute()
    assert float(res["f1"]) == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-9)
    assert float(res["precision"]) == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-9)
    assert float(res["recall"]) == pytest.approx(np.mean([e[2] for e in expected]), rel=1e-9)
    assert 0.05 < float(res["f1"]) < 0.99


@pytest.mark.parametrize("pose_alignment", ["umeyama", "first_frame"])
def test_f1_is_one_for_exact_depth_and_similar_trajectory(mref, pose_alignment):
    gt, K, E, _ = _scene(mref, 5)
    pred_E = _similarity(E, 0.37, Rotation.random(random_state=9).as_matrix(), np.array([1.0, 2.0, 3.0]))
    metric = F1Score(threshold=0.02, max_depth=20.0, pose_alignment=pose_alignment, return_components=True)
    metric.update(torch.from_numpy(2.0 / gt + 0.1), torch.from_numpy(gt), None, torch.from_numpy(K),
                  torch.from_numpy(E), pred_extrinsics=torch.from_numpy(pred_E))
    assert float(metric.compute()["f1"]) == 1.0
    c2w = aligned_camera_to_world(torch.from_numpy(pred_E), torch.from_numpy(E), pose_alignment)
    torch.testing.assert_close(c2w, torch.linalg.inv(torch.from_numpy(E)), atol=1e-9, rtol=0)


def test_f1_pruned_equals_brute_and_subsample(mref):
    gt, K, E, rng = _scene(mref, 6)
    pred = (1.0 / gt) * (1 + rng.normal(0, 0.03, gt.shape))
    args = (torch.from_numpy(pred), torch.from_numpy(gt), None, torch.from_numpy(K), torch.from_numpy(E))
    vals = []
    for nn in ("brute", "pruned"):
        m = F1Score(threshold=0.05, max_depth=20.0, nn=nn)
        m.update(*args, pred_extrinsics=torch.from_numpy(E))
        vals.append(float(m.compute()))
    assert vals[0] == vals[1]
    sub = F1Score(threshold=0.05, max_depth=20.0, num_points=40)
    sub.update(*args, pred_extrinsics=torch.from_numpy(E))
    assert 0.0 < float(sub.compute()) <= 1.0 and float(sub.compute()) != vals[0]


def test_f1_degenerate_trajectory_falls_back_and_needs_pred_poses(mref):
    gt, K, _, _ = _scene(mref, 7)
    E = np.stack([np.eye(4)] * len(gt))
    E[:, 0, 3] = np.arange(len(gt)) * 0.1  # a straight line: Umeyama's roll is undetermined
    depth = torch.from_numpy(mref.render_room(E, K[0], *gt.shape[1:]))
    m = F1Score(threshold=0.02, max_depth=20.0)
    m.update(1.0 / depth, depth, None, torch.from_numpy(K), torch.from_numpy(E), pred_extrinsics=torch.from_numpy(E))
    assert m.pose_fallbacks == 1 and float(m.compute()) == 1.0
    with pytest.raises(ValueError, match="pred_extrinsics"):
        m.update(1.0 / depth, depth, None, torch.from_numpy(K), torch.from_numpy(E))
