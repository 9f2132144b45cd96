"""Converters: each corpus's published layout, written tiny in tmp_path from a known scene.

Every fixture is rendered by ray casting a box room with a sphere from known cameras, then
written in exactly the corpus's own layout, depth encoding and pose convention. The converted
clips must (1) pass the schema, (2) reproduce the rendered depth in metres and the true
relative camera motion, and (3) pass the geometry check; the same data written with a wrong
pose convention must fail the check.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemdepth.data.consistency import check_clip, format_report
from gemdepth.data.converters import CONVERTERS, ConverterError, run_converter
from gemdepth.data.converters import bonn as bonn_mod
from gemdepth.data.converters import kitti as kitti_mod
from gemdepth.data.converters import tartanair as tartanair_mod
from gemdepth.data.converters import tum as tum_mod
from gemdepth.data.schema import validate_clip
from gemdepth.geometry import rotmat_to_quat

H, W = 24, 32
K = np.array([[24.0, 0.0, 15.5], [0.0, 24.0, 11.5], [0.0, 0.0, 1.0]])
ROOM_LO = np.array([-3.0, -2.0, -3.0])  # OpenCV-like world: y points down, y=-2 is the ceiling
ROOM_HI = np.array([3.0, 1.5, 5.0])
#: Spheres (centre, radius) give the room depth structure beyond its planar walls.
SPHERES = [(np.array([0.6, 0.4, 3.0]), 0.7), (np.array([-1.2, -0.3, 2.2]), 0.45),
           (np.array([1.5, -0.8, 4.0]), 0.6), (np.array([-0.4, 0.9, 1.8]), 0.35)]
N_FRAMES = 4


# --------------------------------------------------------------------------- the known scene
def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def c2w_at(t: float) -> np.ndarray:
    """Camera-to-world (OpenCV axes) along a path with translation and rotation per frame.

    The rotation turns about all three axes (non-commuting), so that no wrong convention
    happens to coincide with the right one.
    """
    m = np.eye(4)
    m[:3, :3] = rot_y(0.15 * t) @ rot_x(0.1 * t) @ rot_z(0.12 * t)
    m[:3, 3] = [0.3 * t, -0.1 * t, 0.35 * t]
    return m


def w2c_at(t: float) -> np.ndarray:
    return np.linalg.inv(c2w_at(t))


def render(c2w: np.ndarray, k: np.ndarray = K, h: int = H, w: int = W
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z-depth, uint8 rgb, sky mask) of the room seen by camera ``c2w`` with intrinsics ``k``."""
    v, u = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # z = 1
    d = rays_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    d_safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t_axes = np.where(d_safe > 0, (ROOM_HI - o) / d_safe, (ROOM_LO - o) / d_safe)
    face = t_axes.argmin(-1)
    t_box = t_axes.min(-1)
    a = (d * d).sum(-1)
    t_sph = np.full(d.shape[:2], np.inf)
    for centre, radius in SPHERES:
        oc = o - centre
        b = 2 * (d * oc).sum(-1)
        disc = b * b - 4 * a * ((oc * oc).sum() - radius ** 2)
        t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
        t_sph = np.minimum(t_sph, np.where(t > 0, t, np.inf))
    depth = np.minimum(t_box, t_sph)
    on_sphere = t_sph < t_box
    sky = (face == 1) & (d[..., 1] < 0) & ~on_sphere
    p = o + depth[..., None] * d
    checker = (np.floor(p * 2).astype(int).sum(-1) % 2).astype(float)
    base = np.array([[200, 120, 60], [60, 160, 200], [120, 200, 90]], float)[face]
    rgb = base * (0.6 + 0.4 * checker[..., None])
    rgb[on_sphere] = [220, 40, 40]
    return depth.astype(np.float32), rgb.clip(0, 255).astype(np.uint8), sky


def frames(n: int = N_FRAMES, k: np.ndarray = K, h: int = H, w: int = W, t0: float = 0.0):
    return [render(c2w_at(t0 + i), k, h, w) for i in range(n)]


# --------------------------------------------------------------------------- writing helpers
def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95)


def save_png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values).astype(np.uint16)).save(path)


def save_exr(path: Path, values: np.ndarray) -> None:
    import OpenEXR

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Y": np.ascontiguousarray(values, dtype=np.float32)}).write(str(path))


def quat(rot: np.ndarray) -> np.ndarray:
    return rotmat_to_quat(torch.from_numpy(np.asarray(rot, float))).numpy()


def fmt(values) -> str:
    return " ".join(repr(float(v)) for v in np.ravel(values))


# --------------------------------------------------------------------------- assertions
def converted(fmt_name: str, root: Path, clip_length: int = 8, **options) -> list[dict]:
    clips = list(CONVERTERS[fmt_name].iter_clips(root, clip_length, 1, **options))
    assert clips, f"{fmt_name}: no clips"
    for c in clips:
        validate_clip(c)
        assert c["meta"]["corpus"] == fmt_name
    return clips


def relative(extr: np.ndarray) -> np.ndarray:
    """Poses relative to frame 0 (independent of the world frame a corpus uses)."""
    return extr @ np.linalg.inv(extr[:1])


def assert_matches_scene(clip: dict, k: np.ndarray, depth_rtol: float = 1e-6,
                         depth_atol: float = 0.0, t0: float = 0.0,
                         sky_expected: bool = False) -> None:
    """Depth in metres, intrinsics and relative motion equal the rendered ground truth."""
    true = frames(len(clip["depth"]), k, *clip["depth"].shape[1:], t0=t0)
    for i, (depth, _, sky) in enumerate(true):
        got = clip["depth"][i]
        ok = got > 0
        assert ok.mean() > 0.2
        np.testing.assert_allclose(got[ok], depth[ok], rtol=depth_rtol, atol=depth_atol)
        if sky_expected:
            assert sky.any()
            np.testing.assert_array_equal(clip["sky"][i], sky)
            assert (got[sky] == 0).all()
    np.testing.assert_allclose(clip["intrinsics"], np.broadcast_to(k, clip["intrinsics"].shape),
                               rtol=1e-5, atol=1e-4)
    want = relative(np.stack([w2c_at(t0 + i) for i in range(len(clip["depth"]))]))
    np.testing.assert_allclose(relative(clip["extrinsics"].astype(float)), want, atol=2e-3)


def assert_check(clip: dict, passed: bool) -> dict:
    result = check_clip(clip)
    assert result["passed"] is passed, format_report(result)
    if passed:
        assert result["median_rel"] < 0.01
    return result


# --------------------------------------------------------------------------- vkitti2
def write_vkitti2(root: Path, wrong: bool = False) -> None:
    rel = "Scene01/clone"
    ext_rows, int_rows = [], []
    for i, (depth, rgb, sky) in enumerate(frames()):
        save_rgb(root / "vkitti_2.0.3_rgb" / rel / f"frames/rgb/Camera_0/rgb_{i:05d}.jpg", rgb)
        code = np.round(depth * 100).clip(0, 65534)
        code[sky] = 65535
        save_png16(root / "vkitti_2.0.3_depth" / rel / f"frames/depth/Camera_0/depth_{i:05d}.png",
                   code)
        e = c2w_at(i) if wrong else w2c_at(i)
        for cam in (0, 1):
            ext_rows.append(f"{i} {cam} " + " ".join(f"{v:.10f}" for v in e.ravel()))
            int_rows.append(f"{i} {cam} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}")
    textgt = root / "vkitti_2.0.3_textgt" / rel
    textgt.mkdir(parents=True)
    (textgt / "extrinsic.txt").write_text(
        "frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1\n"
        + "\n".join(ext_rows) + "\n")
    (textgt / "intrinsic.txt").write_text("frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n"
                                          + "\n".join(int_rows) + "\n")


def test_vkitti2(tmp_path: Path) -> None:
    write_vkitti2(tmp_path / "ok")
    (clip,) = converted("vkitti2", tmp_path / "ok")
    assert clip["meta"]["sequence"] == "Scene01_clone_Camera_0"
    assert_matches_scene(clip, K, depth_atol=0.005 + 1e-5, sky_expected=True)  # cm codes
    assert_check(clip, True)
    write_vkitti2(tmp_path / "bad", wrong=True)  # camera-to-world where world-to-camera is due
    assert_check(converted("vkitti2", tmp_path / "bad")[0], False)


# --------------------------------------------------------------------------- tartanair
def write_tartanair(root: Path, wrong: bool = False) -> Path:
    traj = root / "abandonedfactory" / "Easy" / "P000"
    k = tartanair_mod.intrinsics_for(H, W)
    rows = []
    for i, (depth, rgb, sky) in enumerate(frames(k=k)):
        save_rgb(traj / "image_left" / f"{i:06d}_left.png", rgb)
        (traj / "depth_left").mkdir(parents=True, exist_ok=True)
        np.save(traj / "depth_left" / f"{i:06d}_left_depth.npy",
                np.where(sky, 10000.0, depth).astype(np.float32))
        c2w = c2w_at(i)
        rot_ned = c2w[:3, :3] if wrong else c2w[:3, :3] @ tartanair_mod.NED_TO_CV
        rows.append(fmt(c2w[:3, 3]) + " " + fmt(quat(rot_ned)))
    (traj / "pose_left.txt").write_text("\n".join(rows) + "\n")
    return traj


def test_tartanair(tmp_path: Path) -> None:
    write_tartanair(tmp_path / "ok")
    (clip,) = converted("tartanair", tmp_path / "ok")
    assert clip["meta"]["sequence"] == "abandonedfactory_Easy_P000"
    assert_matches_scene(clip, tartanair_mod.intrinsics_for(H, W), 1e-6, sky_expected=True)
    assert_check(clip, True)
    np.testing.assert_allclose(tartanair_mod.intrinsics_for(480, 640), tartanair_mod.K)
    write_tartanair(tmp_path / "bad", wrong=True)  # OpenCV axes where NED is due
    assert_check(converted("tartanair", tmp_path / "bad")[0], False)


# --------------------------------------------------------------------------- pointodyssey
def write_pointodyssey(root: Path, wrong: bool = False) -> None:
    seq = root / "train" / "scene_a"
    for i, (depth, rgb, sky) in enumerate(frames()):
        save_rgb(seq / "rgbs" / f"rgb_{i:05d}.jpg", rgb)
        code = np.round(depth / 1000.0 * 65535).clip(0, 65534)
        code[sky] = 65535
        save_png16(seq / "depths" / f"depth_{i:05d}.png", code)
    extr = np.stack([c2w_at(i) if wrong else w2c_at(i) for i in range(N_FRAMES)])
    np.savez(seq / "anno.npz", intrinsics=np.tile(K, (N_FRAMES, 1, 1)), extrinsics=extr,
             trajs_2d=np.zeros((N_FRAMES, 1, 2)))


def test_pointodyssey(tmp_path: Path) -> None:
    write_pointodyssey(tmp_path / "ok")
    (clip,) = converted("pointodyssey", tmp_path / "ok")
    assert clip["meta"]["sequence"] == "train_scene_a"
    assert_matches_scene(clip, K, depth_atol=500 / 65535 + 1e-5, sky_expected=True)
    assert_check(clip, True)
    write_pointodyssey(tmp_path / "bad", wrong=True)
    assert_check(converted("pointodyssey", tmp_path / "bad")[0], False)


# --------------------------------------------------------------------------- mvs_synth
def write_mvs_synth(root: Path, wrong: bool = False, scale_k: float = 2.0) -> np.ndarray:
    k = np.array([[24.0, 0, 16.0], [0, 24.0, 12.0], [0, 0, 1]])  # centred, so 2x is exact
    seq = root / "GTAV_720" / "0000"
    for i, (depth, rgb, sky) in enumerate(frames(k=k)):
        save_rgb(seq / "images" / f"{i:04d}.png", rgb)
        save_exr(seq / "depths" / f"{i:04d}.exr", np.where(sky, np.inf, depth))
        e = w2c_at(i)
        if wrong:  # OpenGL camera axes (y up, z backwards)
            e = np.diag([1.0, -1.0, -1.0, 1.0]) @ e
        pose = {"extrinsic": e.tolist(), "f_x": k[0, 0] * scale_k, "f_y": k[1, 1] * scale_k,
                "c_x": k[0, 2] * scale_k, "c_y": k[1, 2] * scale_k}
        (seq / "poses").mkdir(parents=True, exist_ok=True)
        (seq / "poses" / f"{i:04d}.json").write_text(json.dumps(pose))
    return k


def test_mvs_synth(tmp_path: Path) -> None:
    pytest.importorskip("OpenEXR")
    k = write_mvs_synth(tmp_path / "ok")  # intrinsics stated for a 2x render: rescaled
    (clip,) = converted("mvs_synth", tmp_path / "ok")
    assert clip["meta"]["intrinsics_rescaled"] is True
    assert_matches_scene(clip, k, 1e-6, sky_expected=True)
    assert_check(clip, True)
    write_mvs_synth(tmp_path / "same", scale_k=1.0)
    assert converted("mvs_synth", tmp_path / "same")[0]["meta"]["intrinsics_rescaled"] is False
    write_mvs_synth(tmp_path / "bad", wrong=True)  # OpenGL axes: the motion is mirrored
    assert_check(converted("mvs_synth", tmp_path / "bad")[0], False)


# --------------------------------------------------------------------------- dynamic_replica
def write_dynamic_replica(root: Path, wrong: bool = False) -> None:
    split = root / "valid"
    flip = np.diag([-1.0, -1.0, 1.0])
    s = min(H, W) / 2.0
    anns = []
    for i, (depth, rgb, _) in enumerate(frames()):
        img_rel = f"seqA/images/seqA-left_{i:06d}.png"
        dep_rel = f"seqA/depths/seqA_{i:04d}_left.geometric.png"
        save_rgb(split / img_rel, rgb)
        save_png16(split / dep_rel, (depth / 2.0).astype(np.float16).view(np.uint16))
        e = w2c_at(i)
        r_p3d = e[:3, :3] if wrong else (flip @ e[:3, :3]).T
        t_p3d = flip @ e[:3, 3]
        vp = {"R": r_p3d.tolist(), "T": t_p3d.tolist(),
              "focal_length": [K[0, 0] / s, K[1, 1] / s],
              "principal_point": [(W / 2 - K[0, 2]) / s, (H / 2 - K[1, 2]) / s],
              "intrinsics_format": "ndc_isotropic"}
        for cam in ("left", "right"):
            anns.append({"sequence_name": "seqA", "frame_number": i, "frame_timestamp": i / 30,
                         "image": {"path": img_rel, "size": [H, W]},
                         "depth": {"path": dep_rel, "scale_adjustment": 2.0, "mask_path": None},
                         "mask": {"path": None}, "viewpoint": vp, "camera_name": cam,
                         "meta": {}})
    with gzip.open(split / "frame_annotations_valid.jgz", "wt", encoding="utf8") as f:
        json.dump(anns, f)


def test_dynamic_replica(tmp_path: Path) -> None:
    write_dynamic_replica(tmp_path / "ok")
    (clip,) = converted("dynamic_replica", tmp_path / "ok")
    assert clip["meta"]["sequence"] == "seqA_left"
    assert_matches_scene(clip, K, depth_rtol=1e-3)  # float16 depth
    assert_check(clip, True)
    write_dynamic_replica(tmp_path / "bad", wrong=True)  # R not transposed (column vectors)
    bad = converted("dynamic_replica", tmp_path / "bad")[0]
    assert_check(bad, False)
    # this mistake mostly mirrors the roll, so it shows most over larger motions
    assert check_clip(bad, gap=3)["median_rel"] > 0.05


# --------------------------------------------------------------------------- sintel
def write_sintel(root: Path, wrong: bool = False) -> None:
    tr = root / "training"
    for i, (depth, rgb, _) in enumerate(frames(), start=1):
        save_rgb(tr / "final" / "alley_1" / f"frame_{i:04d}.png", rgb)
        (tr / "depth" / "alley_1").mkdir(parents=True, exist_ok=True)
        (tr / "camdata_left" / "alley_1").mkdir(parents=True, exist_ok=True)
        tag = np.array([202021.25], "<f4").tobytes()
        (tr / "depth" / "alley_1" / f"frame_{i:04d}.dpt").write_bytes(
            tag + np.array([W, H], "<i4").tobytes() + depth.astype("<f4").tobytes())
        n = (c2w_at(i - 1) if wrong else w2c_at(i - 1))[:3]
        (tr / "camdata_left" / "alley_1" / f"frame_{i:04d}.cam").write_bytes(
            tag + K.astype("<f8").tobytes() + n.astype("<f8").tobytes())


def test_sintel(tmp_path: Path) -> None:
    write_sintel(tmp_path / "ok")
    (clip,) = converted("sintel", tmp_path / "ok")
    assert clip["meta"]["frame_indices"] == [1, 2, 3, 4]
    assert_matches_scene(clip, K, 1e-6)
    assert_check(clip, True)
    write_sintel(tmp_path / "bad", wrong=True)
    assert_check(converted("sintel", tmp_path / "bad")[0], False)
    # a truncated depth file is a counted skip, not a crash
    dpt = tmp_path / "ok" / "training" / "depth" / "alley_1" / "frame_0002.dpt"
    dpt.write_bytes(dpt.read_bytes()[:40])
    (clip,) = converted("sintel", tmp_path / "ok")
    assert clip["meta"]["frame_indices"] == [1, 3, 4]


# --------------------------------------------------------------------------- kitti
KITTI_DRIVE = "2011_09_26_drive_0001_sync"


def _kitti_calib() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p_rect = np.hstack([K, (K @ np.array([0.06, -0.001, 0.002]))[:, None]])
    r_rect = rot_x(0.01) @ rot_y(-0.005)
    velo_cam = np.eye(4)
    velo_cam[:3, :3] = rot_y(0.01) @ np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]])
    velo_cam[:3, 3] = [-0.004, -0.07, -0.27]
    imu_velo = np.eye(4)
    imu_velo[:3, :3] = rot_x(0.02)
    imu_velo[:3, 3] = [-0.81, 0.32, -0.80]
    return p_rect, r_rect, velo_cam, imu_velo


def _euler(rot: np.ndarray) -> tuple[float, float, float]:
    """roll, pitch, yaw with rot = Rz(yaw) Ry(pitch) Rx(roll)."""
    return (math.atan2(rot[2, 1], rot[2, 2]), -math.asin(rot[2, 0]),
            math.atan2(rot[1, 0], rot[0, 0]))


def write_kitti(root: Path, wrong: bool = False) -> None:
    p_rect, r_rect, velo_cam, imu_velo = _kitti_calib()
    date = root / "2011_09_26"
    date.mkdir(parents=True)
    (date / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\n"
        f"S_rect_02: {W} {H}\nR_rect_00: {fmt(r_rect)}\nP_rect_02: {fmt(p_rect)}\n")
    (date / "calib_velo_to_cam.txt").write_text(
        f"calib_time: x\nR: {fmt(velo_cam[:3, :3])}\nT: {fmt(velo_cam[:3, 3])}\n")
    (date / "calib_imu_to_velo.txt").write_text(
        f"calib_time: x\nR: {fmt(imu_velo[:3, :3])}\nT: {fmt(imu_velo[:3, 3])}\n")
    cam_imu = kitti_mod.camera_from_imu(p_rect, r_rect, velo_cam, imu_velo)
    # IMU poses for raw frames 0..8 (annotated depth exists for 5..8, like KITTI's offsets)
    imu_w = [np.linalg.inv(w2c_at(i - 5)) @ (np.eye(4) if wrong else cam_imu) for i in range(9)]
    lat0, lon0, alt0 = math.radians(49.0), math.radians(8.4), 110.0
    scale = math.cos(lat0)
    er = kitti_mod.EARTH_RADIUS
    tx0, ty0 = scale * er * lon0, scale * er * math.log(math.tan(math.pi / 4 + lat0 / 2))
    raw = date / KITTI_DRIVE
    (raw / "oxts" / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(9):
        q = np.linalg.inv(imu_w[0]) @ imu_w[i]  # the devkit's poses are relative to record 0
        lon = (tx0 + q[0, 3]) / (scale * er)
        lat = 2 * math.atan(math.exp((ty0 + q[1, 3]) / (scale * er))) - math.pi / 2
        vals = [math.degrees(lat), math.degrees(lon), alt0 + q[2, 3], *_euler(q[:3, :3])]
        (raw / "oxts" / "data" / f"{i:010d}.txt").write_text(fmt(vals + [0.0] * 24) + "\n")
        if i >= 5:
            depth, rgb, _ = render(c2w_at(i - 5))
            save_rgb(raw / "image_02" / "data" / f"{i:010d}.png", rgb)
            sparse = np.where(rng.uniform(size=depth.shape) < 0.4, depth, 0.0)
            save_png16(root / "train" / KITTI_DRIVE / "proj_depth" / "groundtruth" / "image_02"
                       / f"{i:010d}.png", np.round(sparse * 256))


def test_kitti(tmp_path: Path) -> None:
    write_kitti(tmp_path / "ok")
    (clip,) = converted("kitti", tmp_path / "ok")
    assert clip["meta"]["frame_indices"] == [5, 6, 7, 8] and clip["meta"]["has_pose"]
    assert_matches_scene(clip, K, depth_atol=1 / 512 + 1e-6)
    assert_check(clip, True)
    write_kitti(tmp_path / "bad", wrong=True)  # OXTS written as if IMU = camera
    assert_check(converted("kitti", tmp_path / "bad")[0], False)
    # without OXTS: pose-free ("auto"), or a clear error ("oxts")
    import shutil

    shutil.rmtree(tmp_path / "ok" / "2011_09_26" / KITTI_DRIVE / "oxts")
    (clip,) = converted("kitti", tmp_path / "ok")
    assert clip["extrinsics"] is None and not clip["meta"]["has_pose"]
    with pytest.raises(ConverterError, match="oxts"):
        CONVERTERS["kitti"].iter_clips(tmp_path / "ok", 8, 1, poses="oxts")


# --------------------------------------------------------------------------- scannet
def write_scannet(root: Path, wrong: bool = False) -> Path:
    scene = root / "scene0000_00"
    for i, (depth, _, _) in enumerate(frames()):
        _, rgb_big, _ = render(c2w_at(i), K * np.array([[2], [2], [1]]) + [[0, 0, 0.5],
                                                                        [0, 0, 0.5], [0, 0, 0]],
                               2 * H, 2 * W)
        save_rgb(scene / "color" / f"{i}.jpg", rgb_big)
        save_png16(scene / "depth" / f"{i}.png", np.round(depth * 1000))
        (scene / "pose").mkdir(parents=True, exist_ok=True)
        pose = w2c_at(i) if wrong else c2w_at(i)
        np.savetxt(scene / "pose" / f"{i}.txt", pose)
    (scene / "intrinsic").mkdir()
    k4 = np.eye(4)
    k4[:3, :3] = K
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", k4)
    np.savetxt(scene / "intrinsic" / "intrinsic_color.txt", k4 * [[2], [2], [1], [1]])
    return scene


def test_scannet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = write_scannet(tmp_path / "ok")
    # a fifth frame with ScanNet's invalid-pose marker: skipped and counted
    save_rgb(scene / "color" / "4.jpg", np.zeros((2 * H, 2 * W, 3), np.uint8))
    save_png16(scene / "depth" / "4.png", np.ones((H, W)))
    (scene / "pose" / "4.txt").write_text("-inf -inf -inf -inf\n" * 4)
    with caplog.at_level(logging.WARNING, logger="gemdepth.data.converters"):
        (clip,) = converted("scannet", tmp_path / "ok")
    assert "invalid pose" in caplog.text
    assert clip["meta"]["frame_indices"] == [0, 1, 2, 3]
    assert clip["rgb"].shape == (4, H, W, 3)  # colour resized to the depth camera
    assert_matches_scene(clip, K, depth_atol=5e-4 + 1e-6)
    assert_check(clip, True)
    write_scannet(tmp_path / "bad", wrong=True)
    assert_check(converted("scannet", tmp_path / "bad")[0], False)


# --------------------------------------------------------------------------- tum / bonn
def write_tum_layout(seq: Path, gt_of_c2w, period: float = 0.5) -> None:
    """TUM layout: rgb at ``period`` s, depth 7 ms later (plus a stray one), 100 Hz mocap."""
    t0 = 1305031102.0
    rgb_rows, dep_rows = [], []
    for i, (depth, rgb, _) in enumerate(frames()):
        ts = t0 + i * period
        save_rgb(seq / "rgb" / f"{ts:.6f}.png", rgb)
        save_png16(seq / "depth" / f"{ts + 0.007:.6f}.png", np.round(depth * 5000))
        rgb_rows.append(f"{ts:.6f} rgb/{ts:.6f}.png")
        dep_rows.append(f"{ts + 0.007:.6f} depth/{ts + 0.007:.6f}.png")
    stray = t0 + 0.25  # no rgb frame near it: must not be associated
    save_png16(seq / "depth" / f"{stray:.6f}.png", np.ones((H, W)))
    dep_rows.insert(1, f"{stray:.6f} depth/{stray:.6f}.png")
    head = "# color images\n# file: 'x.bag'\n# timestamp filename\n"
    (seq / "rgb.txt").write_text(head + "\n".join(rgb_rows) + "\n")
    (seq / "depth.txt").write_text(head.replace("color images", "depth maps")
                                   + "\n".join(dep_rows) + "\n")
    gt = []
    for ts in np.arange(t0 - 0.2, t0 + N_FRAMES * period, 0.01):
        m = gt_of_c2w(c2w_at((ts - t0) / period))
        gt.append(f"{ts:.4f} " + fmt(m[:3, 3]) + " " + fmt(quat(m[:3, :3])))
    (seq / "groundtruth.txt").write_text("# ground truth trajectory\n# file: 'x.bag'\n"
                                         "# timestamp tx ty tz qx qy qz qw\n" + "\n".join(gt))


def test_tum(tmp_path: Path) -> None:
    seq = tmp_path / "ok" / "rgbd_dataset_freiburg1_desk"
    write_tum_layout(seq, lambda c2w: c2w)
    (clip,) = converted("tum", tmp_path / "ok", intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    assert clip["meta"]["frame_indices"] == [0, 1, 2, 3]
    assert len(clip["meta"]["timestamps"]) == 4
    assert_matches_scene(clip, K, depth_atol=1e-4 + 1e-6)
    assert_check(clip, True)
    # the documented fr1 camera is picked from the folder name
    (clip,) = converted("tum", tmp_path / "ok")
    np.testing.assert_allclose(clip["intrinsics"][0], tum_mod.CAMERAS["fr1"].K)
    bad = tmp_path / "bad" / "rgbd_dataset_freiburg1_desk"
    write_tum_layout(bad, np.linalg.inv)  # world-to-camera where camera-to-world is due
    (clip,) = converted("tum", tmp_path / "bad", intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    assert_check(clip, False)


def test_bonn(tmp_path: Path) -> None:
    def to_marker(c2w: np.ndarray) -> np.ndarray:  # invert the documented correction
        return bonn_mod.T_ROS @ c2w @ np.linalg.inv(bonn_mod.T_M_RIGID) @ bonn_mod.T_ROS

    write_tum_layout(tmp_path / "ok" / "rgbd_bonn_balloon", to_marker)
    kw = {"intrinsics": (K[0, 0], K[1, 1], K[0, 2], K[1, 2])}
    (clip,) = converted("bonn", tmp_path / "ok", **kw)
    assert_matches_scene(clip, K, depth_atol=1e-4 + 1e-6)
    assert_check(clip, True)
    (clip,) = converted("bonn", tmp_path / "ok")
    np.testing.assert_allclose(clip["intrinsics"][0], bonn_mod.CAMERA.K, rtol=1e-6)
    write_tum_layout(tmp_path / "bad" / "rgbd_bonn_balloon", lambda c2w: c2w)  # uncorrected
    assert_check(converted("bonn", tmp_path / "bad", **kw)[0], False)


def test_tum_association_matches_the_dataset_tool() -> None:
    rgb = np.array([0.00, 0.033, 0.066, 0.100])
    depth = np.array([0.010, 0.020, 0.070, 0.500])
    # differences must be strictly below 0.02 (0.00 vs 0.020 is not); 0.100 has no partner
    assert tum_mod.associate(rgb, depth, 0.02) == [(0, 0), (1, 1), (2, 2)]
    # with an offset, candidates are taken greedily by time difference, one-to-one:
    # (3,2) 0.000, (1,0) 0.007, (2,1) 0.016; then (1,1) 0.017 is refused (both used)
    assert tum_mod.associate(rgb, depth, 0.02, offset=0.03) == [(1, 0), (2, 1), (3, 2)]
    assert tum_mod.detect_tum_camera("rgbd_dataset_freiburg3_walking_xyz") == "fr3"
    assert tum_mod.detect_tum_camera("tum_fr2_desk") == "fr2"
    assert tum_mod.detect_tum_camera("my_sequence") is None


# --------------------------------------------------------------------------- pose-free
def test_irs(tmp_path: Path) -> None:
    pytest.importorskip("OpenEXR")
    scene = tmp_path / "Home" / "ArchVizInterior03Data"
    true = frames(3)
    for i, (depth, rgb, _) in enumerate(true, start=1):
        save_rgb(scene / f"l_{i}.png", rgb)
        save_rgb(scene / f"r_{i}.png", rgb)
        save_exr(scene / f"d_{i}.exr", 480.0 * 0.1 / depth)
    (clip,) = converted("irs", tmp_path)
    assert clip["extrinsics"] is None and clip["meta"]["depth_kind"] == "metric"
    np.testing.assert_allclose(clip["depth"], np.stack([d for d, _, _ in true]), rtol=1e-5)
    np.testing.assert_allclose(clip["intrinsics"][0], [[480, 0, W / 2], [0, 480, H / 2], [0, 0, 1]])
    (clip,) = converted("irs", tmp_path, baseline=None)
    assert clip["meta"]["depth_kind"] == "relative-disparity"
    np.testing.assert_allclose(clip["depth"][0], 48.0 / true[0][0], rtol=1e-5)
    with pytest.raises(ValueError, match="check_clip needs poses"):
        check_clip(clip)


def test_frames(tmp_path: Path) -> None:
    true = frames(3)
    for i, (depth, rgb, _) in enumerate(true):
        save_rgb(tmp_path / "vid1" / "rgb" / f"{i:05d}.png", rgb)
        (tmp_path / "vid1" / "depth").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "vid1" / "depth" / f"{i:05d}.npy", 2.0 / depth)
    (clip,) = converted("frames", tmp_path)
    assert clip["meta"]["depth_kind"] == "relative-disparity" and clip["extrinsics"] is None
    np.testing.assert_allclose(clip["depth"][1], 2.0 / true[1][0], rtol=1e-6)
    f = (W / 2) / math.tan(math.radians(60) / 2)
    np.testing.assert_allclose(clip["intrinsics"][0], [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]],
                               rtol=1e-6)
    (clip,) = converted("frames", tmp_path, label="relative-depth", scale=0.5, corpus="frames")
    np.testing.assert_allclose(clip["depth"][0], true[0][0], rtol=1e-5)  # 1/(0.5·2/d) = d
    clip = next(CONVERTERS["frames"].iter_clips(tmp_path, 8, 1, label="metric-depth",
                                                corpus="stereo_videos", fx=24, fy=24, cx=15.5,
                                                cy=11.5))
    assert clip["meta"]["corpus"] == "stereo_videos" and clip["meta"]["depth_kind"] == "metric"
    np.testing.assert_allclose(clip["intrinsics"][0], K)


# --------------------------------------------------------------------------- clipping, errors
def test_clip_length_and_stride(tmp_path: Path) -> None:
    write_sintel(tmp_path)
    clips = list(CONVERTERS["sintel"].iter_clips(tmp_path, 3, 1))
    assert [c["meta"]["frame_indices"] for c in clips] == [[1, 2, 3], [4]]
    clips = list(CONVERTERS["sintel"].iter_clips(tmp_path, 8, 2))
    assert [c["meta"]["frame_indices"] for c in clips] == [[1, 3]]
    assert check_clip(clips[0])["passed"]  # a larger gap is still consistent


@pytest.mark.parametrize("name, writer, remove, expect", [
    ("vkitti2", write_vkitti2, "vkitti_2.0.3_textgt/Scene01/clone/extrinsic.txt", "extrinsic.txt"),
    ("pointodyssey", write_pointodyssey, "train/scene_a/depths", "depths"),
    ("sintel", write_sintel, "training/camdata_left", "camdata_left"),
    ("scannet", write_scannet, "scene0000_00/intrinsic/intrinsic_depth.txt", "intrinsic_depth"),
    ("tartanair", write_tartanair, "abandonedfactory/Easy/P000/depth_left", "depth_left"),
])
def test_missing_parts_are_named(tmp_path: Path, name: str, writer, remove: str,
                                 expect: str) -> None:
    import shutil

    writer(tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ConverterError, match=expect) as info:
        CONVERTERS[name].iter_clips(tmp_path, 8, 1)  # raises when called, before iterating
    assert "expected layout" in str(info.value)


def test_wrong_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name, conv in CONVERTERS.items():
        with pytest.raises(ConverterError):
            conv.iter_clips(tmp_path / "empty", 8, 1)
    with pytest.raises(ConverterError, match="does not exist"):
        CONVERTERS["tum"].iter_clips(tmp_path / "nowhere", 8, 1)
    write_tum_layout(tmp_path / "seq_without_camera_name", lambda m: m)
    with pytest.raises(ConverterError, match="camera="):
        CONVERTERS["tum"].iter_clips(tmp_path / "seq_without_camera_name", 8, 1)


def test_run_converter_writes_readable_consistent_shards(tmp_path: Path) -> None:
    from gemdepth.data import read_clips

    seq = tmp_path / "raw" / "rgbd_dataset_freiburg1_desk"
    write_tum_layout(seq, lambda c2w: c2w)
    # a corrupt depth PNG: skipped, counted in the returned index
    bad = sorted((seq / "depth").glob("*.png"))[-1]
    bad.write_bytes(b"not a png")
    index = run_converter("tum", tmp_path / "raw", tmp_path / "shards", clip_length=2,
                          progress=False, intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    assert index["corpus"] == "tum" and index["clips"] == 2 and index["frames"] == 3
    assert index["skipped"] == {"unreadable": 1}
    back = list(read_clips(tmp_path / "shards"))
    assert [c["meta"]["frame_indices"] for c in back] == [[0, 1], [2]]
    assert check_clip(back[0])["passed"]
    with pytest.raises(ConverterError, match="unknown format"):
        run_converter("nope", tmp_path / "raw", tmp_path / "x")
    with pytest.raises(ConverterError, match="options it accepts"):
        run_converter("tum", tmp_path / "raw", tmp_path / "x", colour="blue")


def test_command_line_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gemdepth.data.cli import main

    write_tum_layout(tmp_path / "raw" / "rgbd_dataset_freiburg1_desk", lambda c2w: c2w)
    code = main(["convert", "tum", str(tmp_path / "raw"), str(tmp_path / "out"),
                 "--clip-length", "2", "-o", "intrinsics=24,24,15.5,11.5", "-o", "pose_time=depth"])
    assert code == 0, capsys.readouterr().err
    assert "2 clips / 4 frames of corpus tum" in capsys.readouterr().out
    code = main(["convert", "tum", str(tmp_path / "raw"), str(tmp_path / "out2"),
                 "-o", "intrinsics=24,24"])
    assert code == 1 and "intrinsics" in capsys.readouterr().err


def test_poses_repaired_or_refused(tmp_path: Path) -> None:
    write_pointodyssey(tmp_path)
    anno = tmp_path / "train" / "scene_a" / "anno.npz"
    data = dict(np.load(anno))
    data["extrinsics"][1, :3, :3] *= 1.001  # printed-precision noise: projected onto SO(3)
    data["extrinsics"][2, :3, :3] *= 1.5  # not a rotation: the frame is skipped, counted
    np.savez(anno, **data)
    (clip,) = converted("pointodyssey", tmp_path)
    assert clip["meta"]["frame_indices"] == [0, 1, 3]
    assert check_clip(clip)["passed"]


# --------------------------------------------------------------------------- 7-Scenes-style exports
def write_7scenes_style(root: Path, k3: bool = True) -> Path:
    """A ScanNet-layout scene as 7-Scenes-style exports ship it: colour PNGs named
    ``frame-NNNNNN.color.png``, depth ``frame-NNNNNN.depth.png`` in millimetres with 65535 where
    the sensor saw nothing, poses ``frame-NNNNNN.pose.txt``, a 3x3 ``intrinsic_depth.txt``."""
    scene = root / "chess_seq-01"
    for i, (depth, rgb, _) in enumerate(frames()):
        name = f"frame-{i:06d}"
        save_rgb(scene / "color" / f"{name}.color.png", rgb)
        mm = np.round(depth * 1000)
        mm[:4, :6] = 65535  # no measurement
        save_png16(scene / "depth" / f"{name}.depth.png", mm)
        (scene / "pose").mkdir(parents=True, exist_ok=True)
        np.savetxt(scene / "pose" / f"{name}.pose.txt", c2w_at(i))
    (scene / "intrinsic").mkdir()
    k = K if k3 else np.pad(K, ((0, 1), (0, 1)))
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", k)
    return scene


def test_scannet_reads_7scenes_style_exports(tmp_path: Path) -> None:
    write_7scenes_style(tmp_path)
    (clip,) = converted("scannet", tmp_path)
    assert clip["meta"]["frame_indices"] == [0, 1, 2, 3]
    assert clip["meta"]["frame_names"] == [f"frame-{i:06d}.color.png" for i in range(4)]
    assert (clip["depth"][:, :4, :6] == 0).all()  # 65535 -> invalid, not 65.5 m
    assert clip["depth"].max() < 20.0
    assert_matches_scene(clip, K, depth_atol=5e-4 + 1e-6)  # everywhere else: the true depth
    assert_check(clip, True)


def test_scannet_frame_names_without_unique_numbers_use_name_order(tmp_path: Path) -> None:
    scene = write_7scenes_style(tmp_path)
    for i, new in enumerate(["a", "b", "c", "d"]):  # names carrying no number at all
        for sub, suffix in (("color", ".color.png"), ("depth", ".depth.png"),
                            ("pose", ".pose.txt")):
            (scene / sub / f"frame-{i:06d}{suffix}").rename(scene / sub / f"{new}{suffix}")
    (clip,) = converted("scannet", tmp_path)
    assert clip["meta"]["frame_indices"] == [0, 1, 2, 3]
    assert clip["meta"]["frame_index_source"] == "position in name order"
    assert_check(clip, True)


@pytest.mark.parametrize("case, expect", [
    ("2x2 intrinsics", r"intrinsic_depth\.txt: expected a 3x3 or 4x4 intrinsics matrix, got "
                       r"shape 2x2"),
    ("no colour", r"chess_seq-01/color: no colour frames \(\.jpg/\.jpeg/\.png\); found 4 "
                  r"file\(s\): frame-000000\.color\.bmp"),
    ("no depth", r"no clip could be made .* every frame was skipped \(4 frame\(s\): 4 no depth; "
                 r"each one is logged above with its file\)"),
])
def test_scannet_layout_problems_are_one_clear_line(tmp_path: Path, capsys, caplog,
                                                     case: str, expect: str) -> None:
    from gemdepth.data.cli import main

    scene = write_7scenes_style(tmp_path / "raw")
    if case == "2x2 intrinsics":
        np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", np.eye(2))
    elif case == "no colour":
        for p in (scene / "color").iterdir():
            p.rename(p.with_suffix(".bmp"))
    else:
        for p in (scene / "depth").iterdir():
            p.rename(p.with_name(p.name.replace("frame", "depth")))
    with caplog.at_level(logging.WARNING, logger="gemdepth.data.converters"):
        code = main(["convert", "scannet", str(tmp_path / "raw"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("gemdepth data convert: ") and re.search(expect, line), line
    if case == "no depth":  # what the message points at was logged, file by file
        logged = [r.getMessage() for r in caplog.records if "no depth" in r.getMessage()]
        assert len(logged) >= 4 and "frame-000000.color.png: no depth/frame-000000.png" in logged[0]
    assert not (tmp_path / "out" / "index.json").exists()


def test_tum_camera_from_the_file_header(tmp_path: Path) -> None:
    seq = tmp_path / "my_recording"  # a renamed folder: no camera in its name
    write_tum_layout(seq, lambda c2w: c2w)
    for name in ("rgb.txt", "depth.txt"):
        text = (seq / name).read_text().replace("# file: 'x.bag'",
                                                "# file: 'rgbd_dataset_freiburg2_desk.bag'")
        (seq / name).write_text(text)
    assert tum_mod.header_camera(seq)[0] == "fr2"
    (clip,) = converted("tum", seq)
    assert clip["meta"]["camera"] == "fr2"
    np.testing.assert_allclose(clip["intrinsics"][0], tum_mod.CAMERAS["fr2"].K)
    clash = tmp_path / "rgbd_dataset_freiburg3_office"
    seq.rename(clash)
    with pytest.raises(ConverterError, match="folder name says fr3 but .*rgb.txt.* says fr2"):
        CONVERTERS["tum"].iter_clips(clash, 8, 1)
    (clip,) = converted("tum", clash, camera="fr3")  # an explicit choice settles it
    assert clip["meta"]["camera"] == "fr3"


def test_zeroed_depth_is_counted_and_logged(tmp_path: Path, caplog, capsys) -> None:
    from gemdepth.data.cli import main

    true = frames(3)
    rng = np.random.default_rng(0)
    want = {"non-finite pixels": 0, "negative pixels": 0, "frames": 0}
    for i, (depth, rgb, _) in enumerate(true):
        save_rgb(tmp_path / "raw" / "vid" / "rgb" / f"{i:05d}.png", rgb)
        label = depth.copy()
        if i > 0:  # frame 0 is clean
            bad = rng.random(label.shape)
            label[bad < 0.05] = np.nan
            label[(bad >= 0.05) & (bad < 0.08)] = np.inf
            label[bad > 0.9] *= -1
            want["non-finite pixels"] += int((bad < 0.08).sum())
            want["negative pixels"] += int((bad > 0.9).sum())
            want["frames"] += 1
        (tmp_path / "raw" / "vid" / "depth").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "raw" / "vid" / "depth" / f"{i:05d}.npy", label)
    with caplog.at_level(logging.WARNING, logger="gemdepth.data.converters"):
        index = run_converter("frames", tmp_path / "raw", tmp_path / "out", progress=False,
                              label="metric-depth")
    assert index["zeroed_depth"] == want
    assert (f"frames: set {want['non-finite pixels']} non-finite and {want['negative pixels']} "
            "negative depth pixels to 0 (invalid) in 2 frame(s)") in caplog.text
    capsys.readouterr()
    assert main(["convert", "frames", str(tmp_path / "raw"), str(tmp_path / "out2"),
                 "-o", "label=metric-depth"]) == 0
    assert (f"set {want['non-finite pixels']} non-finite and {want['negative pixels']} negative "
            "depth pixels to 0 (invalid) in 2 frame(s)") in capsys.readouterr().out
