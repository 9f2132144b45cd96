"""Chaining window poses: the similarity fit, and the camera plumbing end to end on a rendered
video with a known camera path (a pose oracle stands in for a trained GEM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_fakes import PoseOracleModel, _axis_angle

from gemdepth.geometry import camera_centres, compose_extrinsics, umeyama
from gemdepth.inference import infer_video, network_size, preprocess_frames
from gemdepth.inference.trajectory import apply_similarity, fit_window_similarity


def _random_poses(n: int, seed: int, collinear: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot = _axis_angle(0.6 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    if collinear:
        centres = torch.linspace(0, 3, n, dtype=torch.float64)[:, None] * torch.tensor(
            [[0.3, -0.2, 1.0]], dtype=torch.float64
        )
    else:
        centres = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return compose_extrinsics(rot, -(rot @ centres[..., None])[..., 0])


@pytest.mark.parametrize("collinear", [False, True])
def test_similarity_fit_recovers_a_known_map(collinear) -> None:
    chain = _random_poses(10, 1, collinear)
    g = torch.Generator().manual_seed(2)
    true_r = _axis_angle(torch.randn(3, generator=g, dtype=torch.float64))
    true_s, true_t = 0.37, torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    # the window sees the same cameras in its own world: X_win = (R^T (X_chain - t)) / s
    c2w = torch.linalg.inv(chain)
    win_c2w = c2w.clone()
    win_c2w[:, :3, :3] = true_r.T @ c2w[:, :3, :3]
    win_c2w[:, :3, 3] = ((c2w[:, :3, 3] - true_t) @ true_r) / true_s
    window = torch.linalg.inv(win_c2w)
    sim = fit_window_similarity(window, chain)
    assert sim.scale == pytest.approx(true_s, rel=1e-9)
    torch.testing.assert_close(sim.rotation, true_r, atol=1e-9, rtol=0)
    torch.testing.assert_close(apply_similarity(sim, window), chain, atol=1e-9, rtol=0)


def test_static_camera_keeps_scale_one() -> None:
    poses = _random_poses(10, 3)
    poses[:, :3, 3] = 0.0  # rotation only: all centres at the origin
    sim = fit_window_similarity(poses, poses)
    assert sim.scale == 1.0
    torch.testing.assert_close(apply_similarity(sim, poses), poses)


def _trajectory_error(pred: torch.Tensor, true: torch.Tensor) -> float:
    """RMS camera-centre error after a similarity alignment, relative to the path's extent."""
    p, t = camera_centres(pred.to(torch.float64)), camera_centres(true.to(torch.float64))
    s, r, tr = umeyama(p, t)
    aligned = s * p @ r.T + tr
    return float((aligned - t).norm(dim=-1).pow(2).mean().sqrt() / (t - t.mean(0)).norm(dim=-1).max())


def test_known_camera_path_survives_windowing() -> None:
    from gemdepth.data.synthetic import SynthConfig, render_sequence

    seq = render_sequence(7, SynthConfig(height=42, width=56, frames=60, kind="room", max_yaw_step=3.0))
    frames, true_extr = seq["rgb"], torch.from_numpy(seq["extrinsics"])
    size = network_size(42, 56, 28)
    inputs = preprocess_frames(frames, size)
    intr_net = torch.from_numpy(seq["intrinsics"]).clone()  # in pixels of the network input
    intr_net[:, 0] *= size[1] / 56
    intr_net[:, 1] *= size[0] / 42
    model = PoseOracleModel(inputs, true_extr, intr_net).eval()

    chained = list(infer_video(model, frames, input_size=28))
    official = list(infer_video(model, frames, input_size=28, chain_cameras=False))
    pred = torch.from_numpy(np.stack([r.extrinsics for r in chained]))
    naive = torch.from_numpy(np.stack([r.extrinsics for r in official]))
    rel_true = true_extr.to(torch.float64) @ torch.linalg.inv(true_extr[:1].to(torch.float64))
    assert _trajectory_error(pred, rel_true) < 1e-4
    # rotations are exact (relative to frame 0) and the intrinsics come back at frame size
    torch.testing.assert_close(pred[:, :3, :3].to(torch.float64), rel_true[:, :3, :3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack([r.intrinsics for r in chained]), seq["intrinsics"], rtol=1e-5)
    # the official concatenation keeps each window's own translation scale: visibly wrong
    assert _trajectory_error(naive, rel_true) > 100 * _trajectory_error(pred, rel_true)
