"""The synthetic corpus's camera flavours: fast (strong rotation, fast motion) and a static control."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemdepth.data.synthetic import CAMERA_FLAVOURS, SynthConfig, render_sequence


def _render(camera: str, index: int, frames: int = 12) -> dict:
    return render_sequence(np.random.SeedSequence([7, index]), SynthConfig(height=28, width=28, frames=frames,
                                                                          camera=camera))


def _motion(seq: dict) -> tuple[float, float]:
    """Mean rotation (degrees) and camera-centre displacement (metres) between consecutive frames."""
    rot = seq["extrinsics"][:, :3, :3].astype(np.float64)
    rel = rot[1:] @ rot[:-1].transpose(0, 2, 1)
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    centres = -np.einsum("tji,tj->ti", rot, seq["extrinsics"][:, :3, 3].astype(np.float64))
    return float(np.degrees(np.arccos(cos)).mean()), float(np.linalg.norm(np.diff(centres, axis=0), axis=1).mean())


@pytest.mark.parametrize("camera", CAMERA_FLAVOURS)
def test_flavours_are_deterministic_per_seed(camera: str) -> None:
    a, b, c = _render(camera, 0), _render(camera, 0), _render(camera, 1)
    for key in ("rgb", "depth", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rgb"], c["rgb"])


def test_fast_camera_rotates_and_moves_more_than_smooth() -> None:
    smooth = np.array([_motion(_render("smooth", i)) for i in range(4)])
    fast = np.array([_motion(_render("fast", i)) for i in range(4)])
    assert fast[:, 0].mean() > 2.5 * smooth[:, 0].mean()  # degrees per frame
    assert fast[:, 1].mean() > 2.0 * smooth[:, 1].mean()  # metres per frame
    assert fast[:, 0].mean() > 3.0


def test_static_camera_holds_the_first_pose_while_objects_move() -> None:
    moved = False
    for i in range(4):
        seq = _render("static", i)
        np.testing.assert_array_equal(seq["extrinsics"], np.broadcast_to(seq["extrinsics"][:1], seq["extrinsics"].shape))
        moved |= bool(seq["dynamic"].any() and np.abs(np.diff(seq["depth"], axis=0)).max() > 0)
    assert moved  # the scene's own motion is kept: only the camera is fixed


def test_default_is_smooth_and_unknown_flavour_is_refused() -> None:
    assert SynthConfig().camera == "smooth"
    with pytest.raises(ValueError, match="camera must be one of"):
        _render("shaky", 0)


def test_data_synth_cli_renders_the_static_control(tmp_path: Path) -> None:
    from gemdepth.data.cli import main

    out = tmp_path / "static"
    assert main(["synth", "--out", str(out), "--sequences", "1", "--frames", "5", "--clip-length", "5",
                 "--size", "28x28", "--camera", "static", "--workers", "1"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["source"]["config"]["camera"] == "static"
    from gemdepth.data import read_sequences

    seq = next(iter(read_sequences(out)))
    assert np.allclose(seq["extrinsics"], seq["extrinsics"][:1])
