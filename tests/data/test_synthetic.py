"""Synthetic corpus: geometry checked independently of the renderer, determinism, flavours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gemdepth.data import read_clips
from gemdepth.data.synthetic import (
    SynthConfig,
    iter_synthetic_clips,
    make_synthetic_corpus,
    render_sequence,
)
from gemdepth.geometry import backproject, camera_centres, invert_rigid, project, transform_points


def reprojection_errors(depth: np.ndarray, intr: np.ndarray, extr: np.ndarray, i: int, j: int,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Relative z disagreement of frame i's points seen from frame j (independent check).

    Frame j's depth is sampled by bilinear interpolation of *inverse* depth (exact on planes)
    at the projected positions; occlusions and out-of-view points are left in or dropped, so
    the caller should look at a median.
    """
    d = torch.from_numpy(depth).double()
    k = torch.from_numpy(intr).double()
    e = torch.from_numpy(extr).double()
    h, w = d.shape[1:]
    pts = transform_points(e[j] @ invert_rigid(e[i]), backproject(d[i], k[i]))
    uv, z = project(pts, k[j])
    grid = torch.stack([uv[..., 0] / (w - 1) * 2 - 1, uv[..., 1] / (h - 1) * 2 - 1], -1)
    inv = torch.where(d[j] > 0, 1 / d[j].clamp_min(1e-9), torch.zeros_like(d[j]))
    dj = F.grid_sample(inv[None, None], grid[None], align_corners=True)[0, 0]
    dj = torch.where(dj > 0, 1 / dj.clamp_min(1e-12), torch.zeros_like(dj))
    ok = (d[i] > 0) & (z > 0) & (grid.abs() < 1).all(-1) & (dj > 0)
    if mask is not None:
        ok &= torch.from_numpy(mask)
    return ((z - dj).abs() / dj)[ok].numpy()


@pytest.mark.parametrize("kind", ["room", "open"])
def test_rendered_geometry_is_consistent(kind: str) -> None:
    cfg = SynthConfig(height=48, width=64, frames=6, kind=kind)
    for seed in range(2):
        seq = render_sequence(seed, cfg)
        assert seq["kind"] == kind
        errs = reprojection_errors(seq["depth"], seq["intrinsics"], seq["extrinsics"], 0, 4,
                                   mask=~seq["dynamic"][0])
        assert errs.size > 200
        assert np.median(errs) < 1e-4
        assert np.mean(errs < 1e-3) > 0.5


def test_shards_of_static_scenes_reproject_consistently(tmp_path: Path) -> None:
    make_synthetic_corpus(tmp_path, sequences=2, frames=6, clip_length=6, size=(48, 64), seed=3,
                          progress=False, config=SynthConfig(moving_fraction=0.0))
    for clip in read_clips(tmp_path):
        for i, j in ((0, 2), (5, 1)):
            errs = reprojection_errors(clip["depth"], clip["intrinsics"], clip["extrinsics"], i, j)
            assert errs.size > 200
            assert np.median(errs) < 2e-3  # float16 storage: relative step 2^-11 per map


def test_wrong_pose_convention_fails_the_check() -> None:
    """The check can fail: camera-to-world poses given as world-to-camera disagree."""
    seq = render_sequence(0, SynthConfig(height=48, width=64, frames=6, kind="room"))
    wrong = invert_rigid(torch.from_numpy(seq["extrinsics"]).double()).float().numpy()
    errs = reprojection_errors(seq["depth"], seq["intrinsics"], wrong, 0, 4)
    assert errs.size == 0 or np.median(errs) > 1e-2


def test_seeded_determinism(tmp_path: Path) -> None:
    cfg = SynthConfig(height=32, width=40, frames=4)
    a, b, c = render_sequence(7, cfg), render_sequence(7, cfg), render_sequence(8, cfg)
    for key in ("rgb", "depth", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rgb"], c["rgb"])
    one = make_synthetic_corpus(tmp_path / "one", 3, 4, 4, (32, 40), seed=5, progress=False,
                                clips_per_shard=2)
    two = make_synthetic_corpus(tmp_path / "two", 3, 4, 4, (32, 40), seed=5, progress=False,
                                clips_per_shard=2, workers=2)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_scenes_have_what_training_needs() -> None:
    """Strong rotation with translation, exact depth ranges, textures, sky only outdoors."""
    rooms = [render_sequence(s, SynthConfig(height=40, width=48, frames=24, kind="room"))
             for s in range(3)]
    opens = [render_sequence(s, SynthConfig(height=40, width=48, frames=24, kind="open"))
             for s in range(3)]
    for seq in rooms + opens:
        extr = torch.from_numpy(seq["extrinsics"]).double()
        rel = extr[-1, :3, :3] @ extr[0, :3, :3].T
        angle = torch.rad2deg(torch.arccos(((rel.trace() - 1) / 2).clamp(-1, 1)))
        steps = (camera_centres(extr)[1:] - camera_centres(extr)[:-1]).norm(dim=-1)
        assert angle > 10 and steps.mean() > 0.005
        assert seq["rgb"].reshape(-1, 3).std(0).min() > 10  # not flat
        valid = seq["depth"][seq["depth"] > 0]
        assert valid.min() > 0.05
    assert all(not seq["sky"].any() and (seq["depth"] > 0).all() for seq in rooms)
    assert all(seq["sky"].any() and (seq["depth"][seq["sky"]] == 0).all() for seq in opens)
    assert any(seq["dynamic"].any() for seq in rooms + opens)


def test_pose_free_flavour_has_same_renders(tmp_path: Path) -> None:
    posed = list(iter_synthetic_clips(1, 4, 2, (32, 40), seed=2))
    free = list(iter_synthetic_clips(1, 4, 2, (32, 40), seed=2, pose_free=True))
    assert len(posed) == len(free) == 2
    for p, f in zip(posed, free):
        np.testing.assert_array_equal(p["rgb"], f["rgb"])
        np.testing.assert_array_equal(p["depth"], f["depth"])
        assert f["extrinsics"] is None and f["meta"]["has_pose"] is False
        assert f["meta"]["corpus"] == "synthetic_posefree" and p["meta"]["has_pose"] is True
    index = make_synthetic_corpus(tmp_path, 1, 4, 2, (32, 40), seed=2, pose_free=True,
                                  progress=False)
    assert index["has_pose"] is False and index["corpus"] == "synthetic_posefree"
    assert all(c["extrinsics"] is None for c in read_clips(tmp_path))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="clip_length"):
        list(iter_synthetic_clips(1, frames=4, clip_length=8))
    with pytest.raises(ValueError, match="kind"):
        render_sequence(0, SynthConfig(kind="cave", frames=2, height=16, width=16))
