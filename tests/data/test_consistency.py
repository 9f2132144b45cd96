"""The geometry check against an independent numpy computation, and its verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gemdepth.data.consistency import check_clip, format_report, reprojection_consistency

H, W = 30, 40
K = np.array([[30.0, 0.0, 19.5], [0.0, 30.0, 14.5], [0.0, 0.0, 1.0]])


def rigid(rot: np.ndarray, trans) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = trans
    return m


def rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def reference(depth_s, depth_d, ks, kd, es, ed, inlier_rel=0.05) -> dict:
    """Point-by-point numpy version with nearest sampling, written from the definition."""
    valid = depth_s > 0
    v, u = np.nonzero(valid)
    z = depth_s[v, u]
    pix = np.stack([u, v, np.ones_like(u)]).astype(float)
    cam_s = np.linalg.inv(ks) @ pix * z
    world = np.linalg.inv(es) @ np.vstack([cam_s, np.ones_like(z)])
    cam_d = (ed @ world)[:3]
    zd = cam_d[2]
    front = zd > 1e-9
    proj = kd @ cam_d
    ud = np.where(front, proj[0] / np.where(front, zd, 1), -1e9)
    vd = np.where(front, proj[1] / np.where(front, zd, 1), -1e9)
    inside = (ud > -0.5) & (ud < W - 0.5) & (vd > -0.5) & (vd < H - 0.5)
    ui = np.clip(np.round(ud), 0, W - 1).astype(int)
    vi = np.clip(np.round(vd), 0, H - 1).astype(int)
    sampled = depth_d[vi, ui]
    use = front & inside & (sampled > 0)
    diff = np.abs(zd - sampled)[use]
    rel = diff / sampled[use]

    def lower_median(x):
        return np.sort(x)[(len(x) - 1) // 2]

    return {"median_abs": lower_median(diff), "mean_abs": diff.mean(),
            "median_rel": lower_median(rel), "mean_rel": rel.mean(),
            "inlier_fraction": (rel < inlier_rel).mean(), "compared": int(use.sum()),
            "source_valid": int(valid.sum())}


def plane_depth(k: np.ndarray, w2c: np.ndarray, normal, offset: float) -> np.ndarray:
    """z-depth of the world plane ``normal·X = offset`` seen by camera ``w2c``."""
    c2w = np.linalg.inv(w2c)
    v, u = np.mgrid[0:H, 0:W].astype(float)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # camera, z = 1
    d = rays @ c2w[:3, :3].T
    o = c2w[:3, 3]
    n = np.asarray(normal, float)
    t = (offset - n @ o) / (d @ n)
    return np.where(t > 0, t, 0.0).astype(np.float32)


def test_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(1)
    depth_s = rng.uniform(1.0, 5.0, (H, W)).astype(np.float32)
    depth_d = rng.uniform(1.0, 5.0, (H, W)).astype(np.float32)
    depth_s[rng.uniform(size=(H, W)) < 0.2] = 0
    depth_d[rng.uniform(size=(H, W)) < 0.2] = 0
    es = rigid(rot("y", 0.1) @ rot("x", -0.05), [0.1, 0.0, -0.2])
    ed = rigid(rot("z", 0.08) @ rot("y", -0.12), [-0.2, 0.05, 0.1])
    kd = K + [[2.0, 0.5, 1.0], [0, -1.0, 0.5], [0, 0, 0]]
    got = reprojection_consistency(depth_s, depth_d, K, kd, es, ed, sampling="nearest")
    want = reference(depth_s, depth_d, K, kd, es, ed)
    assert got["compared"] == want["compared"] > 300
    assert got["source_valid"] == want["source_valid"]
    for key in ("median_abs", "mean_abs", "median_rel", "mean_rel", "inlier_fraction"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key


def test_exact_scene_and_a_scaled_target() -> None:
    """Fronto-parallel wall, camera shifted by exactly 2 pixels: every number is known."""
    z = 3.0
    e0 = np.eye(4)
    e1 = rigid(np.eye(3), [-2 * z / K[0, 0], 0.0, 0.0])  # camera moves right: scene shifts 2 px
    d0 = plane_depth(K, e0, [0, 0, 1], z)
    d1 = plane_depth(K, e1, [0, 0, 1], z)
    ok = reprojection_consistency(d0, d1, K, K, e0, e1)
    assert ok["median_abs"] == pytest.approx(0.0, abs=1e-6)
    assert ok["compared"] == (W - 2) * H and ok["overlap"] == pytest.approx((W - 2) / W)
    assert ok["static_median_abs"] == pytest.approx(0.0, abs=1e-6)  # a wall: motion-blind
    scaled = reprojection_consistency(d0, d1 * 1.1, K, K, e0, e1)
    assert scaled["median_rel"] == pytest.approx(0.1 / 1.1, rel=1e-5)
    assert scaled["inlier_fraction"] == 0.0


def _two_view_scene(occluder: bool = False) -> dict:
    """Two views of a tilted floor and a back wall (depth = nearer of the two planes)."""
    poses = [np.eye(4), rigid(rot("y", 0.2) @ rot("x", 0.1) @ rot("z", 0.1), [0.4, -0.1, 0.3])]
    depth = []
    for e in poses:
        floor = plane_depth(K, e, [0.0, 1.0, 0.2], 1.5)
        wall = plane_depth(K, e, [0.1, 0.0, 1.0], 6.0)
        d = np.where((floor > 0) & ((floor < wall) | (wall == 0)), floor, wall)
        depth.append(d)
    if occluder:  # something in front of the second camera only (a moving object)
        depth[1][10:18, 14:26] = 0.8
    return {"rgb": np.zeros((2, H, W, 3), np.uint8), "depth": np.stack(depth),
            "intrinsics": np.stack([K, K]).astype(np.float32),
            "extrinsics": np.stack(poses).astype(np.float32),
            "meta": {"depth_kind": "metric", "frame_indices": [0, 1]}}


def test_correct_poses_pass_and_wrong_conventions_fail() -> None:
    clip = _two_view_scene()
    good = check_clip(clip)
    assert good["passed"], format_report(good)
    assert good["median_rel"] < 0.005 and good["inlier_fraction"] > 0.9
    assert good["static_median_rel"] > 0.05  # the pair is informative
    wrong = {
        "camera-to-world": np.linalg.inv(clip["extrinsics"].astype(float)),
        "OpenGL axes": np.diag([1.0, -1.0, -1.0, 1.0]) @ clip["extrinsics"],
        "NED axes": np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
        @ clip["extrinsics"],
    }
    for name, extr in wrong.items():
        bad = check_clip({**clip, "extrinsics": extr.astype(np.float32)})
        assert not bad["passed"], name
        assert bad["reasons"] and bad["reasons"][0].startswith("frames 0->1: "), name
        assert "FAIL" in format_report(bad, name)


def test_occlusion_and_thresholds() -> None:
    clip = _two_view_scene(occluder=True)
    res = check_clip(clip)
    assert res["passed"], format_report(res)
    assert 0.5 < res["inlier_fraction"] < 0.9  # the occluder is an outlier, not a failure
    scaled = {**clip, "depth": clip["depth"] * np.array([1.0, 1.015], np.float32)[:, None, None]}
    assert check_clip(scaled)["passed"]  # 1.5 % < the default 2 %
    strict = check_clip(scaled, max_median_rel=0.01)
    assert not strict["passed"] and "median relative disagreement" in strict["reasons"][0]
    far = check_clip(clip, max_depth=1.0)  # only the occluder and near floor remain
    assert far["compared"] < res["compared"]


def test_no_overlap_and_bad_inputs() -> None:
    clip = _two_view_scene()
    away = clip["extrinsics"].copy()
    away[1] = rigid(rot("y", math.pi), [0, 0, 0]).astype(np.float32)  # looks backwards
    res = check_clip({**clip, "extrinsics": away})
    assert not res["passed"] and "points compared" in res["reasons"][0]
    with pytest.raises(ValueError, match="pose-free"):
        check_clip({**clip, "extrinsics": None})
    with pytest.raises(ValueError, match="metric depth"):
        check_clip({**clip, "meta": {"depth_kind": "relative-disparity"}})
    with pytest.raises(ValueError, match="gap"):
        check_clip(clip, gap=2)
    with pytest.raises(ValueError, match="sampling"):
        reprojection_consistency(clip["depth"][0], clip["depth"][1], K, K, np.eye(4), np.eye(4),
                                 sampling="cubic")
