"""The real TUM RGB-D sample (fr1/xyz, 37 frames): conversion and measured geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gemdepth.data.consistency import check_clip, format_report, reprojection_consistency
from gemdepth.data.converters import CONVERTERS, tum
from gemdepth.data.schema import validate_clip


_CACHE: dict[Path, dict] = {}


@pytest.fixture
def tum_clip(real_dir: Path) -> dict:
    """The whole sample as one clip (converted once per session: it takes about a second)."""
    root = Path(real_dir) / "tum_fr1_xyz"
    if root not in _CACHE:
        clips = list(CONVERTERS["tum"].iter_clips(root, 64, 1))
        assert len(clips) == 1
        _CACHE[root] = clips[0]
    return _CACHE[root]


def test_conversion(tum_clip: dict) -> None:
    validate_clip(tum_clip)
    meta = tum_clip["meta"]
    # 32 of the 37 rgb frames get a depth partner one-to-one within 20 ms (README)
    assert len(meta["frame_indices"]) == 32 and meta["frame_indices"][0] == 0
    assert meta["camera"] == "fr1" and meta["has_pose"]
    np.testing.assert_allclose(tum_clip["intrinsics"][0], tum.CAMERAS["fr1"].K)
    assert tum_clip["rgb"].shape == (32, 480, 640, 3)
    valid = tum_clip["depth"] > 0
    assert 0.5 < valid.mean() < 1.0
    assert 0.3 < float(np.median(tum_clip["depth"][valid])) < 3.0  # metres, a desk scene


def test_frame0_into_frame31_within_a_centimetre(tum_clip: dict) -> None:
    d, k, e = tum_clip["depth"], tum_clip["intrinsics"], tum_clip["extrinsics"]
    res = reprojection_consistency(d[0], d[31], k[0], k[31], e[0], e[31])
    assert res["median_abs"] < 0.01, res  # README: under a centimetre
    assert 0.4 < res["static_median_abs"] < 0.5, res  # README: about 0.46 m without motion
    assert res["compared"] > 50_000
    # the same frames with the poses read as world-to-camera: far off
    inv = np.linalg.inv(e.astype(np.float64))
    wrong = reprojection_consistency(d[0], d[31], k[0], k[31], inv[0], inv[31])
    assert wrong["median_abs"] > 3 * res["median_abs"]


def test_whole_clip_passes_and_wrong_convention_fails(tum_clip: dict) -> None:
    res = check_clip(tum_clip, gap=10)  # all 22 pairs ten frames apart
    assert res["passed"], format_report(res)
    assert res["median_abs"] < 0.01 and res["static_median_rel"] > 0.1
    every10 = {k: (v[::10] if isinstance(v, np.ndarray) else v) for k, v in tum_clip.items()}
    every10["meta"] = {**tum_clip["meta"], "frame_indices": tum_clip["meta"]["frame_indices"][::10]}
    wrong = {**every10, "extrinsics": np.linalg.inv(every10["extrinsics"]).astype(np.float32)}
    bad = check_clip(wrong)
    assert not bad["passed"], format_report(bad)


def test_undistorted_and_depth_time_variants(real_dir: Path) -> None:
    root = Path(real_dir) / "tum_fr1_xyz"
    for options in ({"undistort": True}, {"pose_time": "depth"}):
        (clip,) = CONVERTERS["tum"].iter_clips(root, 64, 1, **options)
        validate_clip(clip)
        d, k, e = clip["depth"], clip["intrinsics"], clip["extrinsics"]
        res = reprojection_consistency(d[0], d[31], k[0], k[31], e[0], e[31])
        assert res["median_abs"] < 0.01, (options, res)
    assert clip["meta"]["pose_source"].endswith("at the depth timestamp")
