"""Camera head: parity with the official per-iteration pose encodings, activations, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gemdepth.models.plugins.camera_head import CameraHead, activate_pose


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_camera_head_matches_official_iterations(official_dir: Path) -> None:
    sd = load_file(official_dir / "gemdepth_mini.safetensors")
    io = load_file(official_dir / "gemdepth_mini_io.safetensors")
    head = CameraHead(128, trunk_depth=1).eval()
    head.load_state_dict({k[len("camera_head."):]: v for k, v in sd.items()
                          if k.startswith("camera_head.")})
    with torch.no_grad():
        iters = head(io["gem_camera_tokens"])
    assert len(iters) == 4
    _close(torch.stack(iters), io["pose_enc_iters"])


def test_activations_and_shapes() -> None:
    head = CameraHead(32, trunk_depth=1, num_heads=4, num_iterations=3)
    out = head(torch.randn(2, 5, 32))
    assert [o.shape for o in out] == [(2, 5, 9)] * 3
    assert all((o[..., 7:] >= 0).all() for o in out)  # FoV is ReLU'd
    raw = torch.tensor([[-1.0, 2.0, -3.0, -0.5, 0.5, -0.1, 0.9, -0.2, 0.3]])
    act = activate_pose(raw)
    assert torch.equal(act[:, :7], raw[:, :7])  # translation and quaternion linear
    assert torch.equal(act[:, 7:], torch.tensor([[0.0, 0.3]]))


def test_refinement_detaches_previous_estimate() -> None:
    head = CameraHead(32, trunk_depth=1, num_heads=4, num_iterations=2)
    tokens = torch.randn(1, 3, 32)
    # the learned empty pose only conditions iteration 1; iteration 2 starts from the detached
    # estimate, so its output carries no gradient to the empty pose
    head(tokens)[0].sum().backward()
    assert head.empty_pose_tokens.grad is not None and head.empty_pose_tokens.grad.abs().sum() > 0
    head.zero_grad(set_to_none=True)
    head(tokens)[1].sum().backward()
    assert head.empty_pose_tokens.grad is None
    assert head.pose_branch.fc2.weight.grad is not None


def test_bad_activation_is_named() -> None:
    with pytest.raises(ValueError, match="unknown pose activation 'tanh'"):
        CameraHead(32, trunk_depth=0, num_heads=4, fov_act="tanh")
