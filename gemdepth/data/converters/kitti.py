"""KITTI depth prediction (Uhrig et al., 3DV 2017): annotated depth with the raw recordings.

Annotated depth (``data_depth_annotated``), ROOT::

    [train|val/]<date>_drive_<nnnn>_sync/proj_depth/groundtruth/image_02/<0000000005>.png
        16-bit PNG, metres = value / 256, 0 = no lidar point (sparse)

Raw recordings (``raw_root=``, default ROOT)::

    <date>/calib_cam_to_cam.txt     P_rect_02 (3×4 rectified projection), R_rect_00
    <date>/calib_velo_to_cam.txt    R, T: velodyne -> unrectified camera 0
    <date>/calib_imu_to_velo.txt    R, T: IMU -> velodyne
    <date>/<drive>/image_02/data/<0000000005>.png
    <date>/<drive>/oxts/data/<0000000005>.txt   lat lon alt roll pitch yaw ... (GPS/IMU)

Intrinsics are ``P_rect_02[:, :3]``. KITTI has no camera poses, so we derive them from OXTS
as the raw-data development kit does (``poses="auto"``/``"oxts"``): the IMU pose is a
Mercator projection of latitude/longitude (scale ``cos(lat₀)`` of the drive's first
record, Earth radius 6378137 m) with altitude, and rotation ``Rz(yaw)·Ry(pitch)·Rx(roll)``;
it is taken relative to the drive's first record, then mapped to the rectified camera:
``E = [I | K⁻¹·P_rect_02[:, 3]] · R_rect_00 · T_cam0←velo · T_velo←imu · T_world←imu⁻¹``.
OXTS (RTK GPS/INS) poses are good to centimetres, not to the depth's accuracy; the geometry
check on real drives shows how good. ``poses="none"`` writes a pose-free corpus; ``"auto"``
uses OXTS only when every drive has it (a corpus is all-posed or all pose-free).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gemdepth.data.converters._common import (
    ConverterError,
    FrameError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    log,
    natural_key,
    read_png16,
    read_rgb,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "EARTH_RADIUS", "read_calib", "oxts_to_imu_poses",
           "camera_from_imu", "iter_clips"]

CORPUS = "kitti"
#: ``-o key=value`` options of ``gemdepth data convert kitti`` and their meaning.
OPTIONS: dict[str, str] = {
    'raw_root': 'folder of the raw recordings (default: ROOT)',
    'camera': '2 (left colour) or 3 (right colour)',
    'split': 'train or val sub-folder to convert (default: all)',
    'poses': 'auto (OXTS poses when every drive has them), oxts (insist) or none',
}
LICENCE = "CC-BY-NC-SA-3.0"
LAYOUT = ("ROOT: [train|val/]<drive>/proj_depth/groundtruth/image_0<c>/<n>.png; raw_root: "
          "<date>/{calib_cam_to_cam.txt, <drive>/image_0<c>/data/<n>.png [, <drive>/oxts/data/"
          "<n>.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt]}")
EARTH_RADIUS = 6378137.0


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """``key: numbers`` lines of a KITTI calibration file (non-numeric entries are dropped)."""
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        try:
            out[key.strip()] = np.asarray(value.split(), dtype=np.float64)
        except ValueError:
            continue  # e.g. calib_time
    return out


def _rigid(calib: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if "R" not in calib or "T" not in calib or calib["R"].size != 9 or calib["T"].size != 3:
        raise ConverterError(f"{path}: expected 'R:' (9 numbers) and 'T:' (3 numbers)")
    m = np.eye(4)
    m[:3, :3] = calib["R"].reshape(3, 3)
    m[:3, 3] = calib["T"]
    return m


def oxts_to_imu_poses(oxts: np.ndarray) -> np.ndarray:
    """IMU-to-world ``(N, 4, 4)`` of OXTS rows ``(N, >=6)`` (lat, lon, alt, roll, pitch, yaw).

    Mercator scale from the first row's latitude; poses relative to the first row's pose.
    """
    lat, lon, alt = np.radians(oxts[:, 0]), np.radians(oxts[:, 1]), oxts[:, 2]
    roll, pitch, yaw = oxts[:, 3], oxts[:, 4], oxts[:, 5]
    scale = np.cos(lat[0])
    tx = scale * EARTH_RADIUS * lon
    ty = scale * EARTH_RADIUS * np.log(np.tan(np.pi / 4 + lat / 2))
    n = len(oxts)
    c, s = np.cos, np.sin
    rx = np.zeros((n, 3, 3))
    rx[:, 0, 0] = 1
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = c(roll), -s(roll), s(roll), c(roll)
    ry = np.zeros((n, 3, 3))
    ry[:, 1, 1] = 1
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = c(pitch), s(pitch), -s(pitch), c(pitch)
    rz = np.zeros((n, 3, 3))
    rz[:, 2, 2] = 1
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = c(yaw), -s(yaw), s(yaw), c(yaw)
    pose = np.tile(np.eye(4), (n, 1, 1))
    pose[:, :3, :3] = rz @ ry @ rx
    pose[:, :3, 3] = np.stack([tx, ty, alt], -1)
    return np.linalg.inv(pose[0]) @ pose


def camera_from_imu(p_rect: np.ndarray, r_rect: np.ndarray, velo_cam: np.ndarray,
                    imu_velo: np.ndarray) -> np.ndarray:
    """4×4 IMU -> rectified camera transform for projection ``p_rect`` (3×4)."""
    k = p_rect[:, :3]
    rect = np.eye(4)
    rect[:3, :3] = r_rect
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(k, p_rect[:, 3])
    return shift @ rect @ velo_cam @ imu_velo


def _drives(root: Path, camera: int, split: str | None) -> list[Path]:
    pattern = f"proj_depth/groundtruth/image_0{camera}"
    found = set()
    for depth in ("", "*/", "*/*/"):
        for p in root.glob(f"{depth}{pattern}"):
            drive = p.parents[2]
            if split is None or split in drive.relative_to(root).parts[:-1]:
                found.add(drive)
    return sorted(found, key=lambda p: natural_key(p.name))


def _raw_drive(raw_root: Path, drive: Path) -> Path | None:
    date = drive.name[:10]
    for cand in (raw_root / date / drive.name, raw_root / drive.name, drive):
        if (cand / "image_02").is_dir() or (cand / "image_03").is_dir():
            return cand
    return None


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               raw_root: Path | None = None, camera: int = 2, split: str | None = None,
               poses: str = "auto") -> Iterator[dict]:
    """Clips of every annotated drive under ``root`` (see the module docstring)."""
    if camera not in (2, 3):
        raise ConverterError(f"camera must be 2 or 3, got {camera!r}")
    if poses not in ("auto", "oxts", "none"):
        raise ConverterError(f"poses must be 'auto', 'oxts' or 'none', got {poses!r}")
    root = as_path(root)
    raw_root = as_path(raw_root) if raw_root is not None else root
    drives = _drives(root, camera, split)
    if not drives:
        raise ConverterError(f"no <drive>/proj_depth/groundtruth/image_0{camera} under {root}; "
                             f"expected layout: {LAYOUT}")
    plans = []
    for drive in drives:
        raw = _raw_drive(raw_root, drive)
        if raw is None:
            raise ConverterError(f"no raw recording for {drive.name}: looked for "
                                 f"{raw_root / drive.name[:10] / drive.name}/image_0{camera}/data; "
                                 f"pass raw_root= (expected layout: {LAYOUT})")
        date_dir = raw.parent
        cam_calib = date_dir / "calib_cam_to_cam.txt"
        if not cam_calib.is_file():
            raise ConverterError(f"missing file {cam_calib}; expected layout: {LAYOUT}")
        has_oxts = ((raw / "oxts" / "data").is_dir()
                    and (date_dir / "calib_velo_to_cam.txt").is_file()
                    and (date_dir / "calib_imu_to_velo.txt").is_file())
        if poses == "oxts" and not has_oxts:
            raise ConverterError(f"poses='oxts' but {raw}/oxts/data or {date_dir}/calib_"
                                 "{velo_to_cam,imu_to_velo}.txt is missing")
        plans.append((drive, raw, date_dir, has_oxts))
    use_poses = poses == "oxts" or (poses == "auto" and all(p[3] for p in plans))
    if poses == "auto" and not use_poses:
        log.warning("kitti: some drives lack OXTS data or IMU/velodyne calibration; writing a "
                    "pose-free corpus (poses='oxts' to insist)")
    skips = SkipLog(CORPUS)

    def generate() -> Iterator[dict]:
        for drive, raw, date_dir, _ in plans:
            calib = read_calib(date_dir / "calib_cam_to_cam.txt")
            key = f"P_rect_0{camera}"
            if key not in calib or calib[key].size != 12 or "R_rect_00" not in calib:
                raise ConverterError(f"{date_dir / 'calib_cam_to_cam.txt'} lacks {key} or "
                                     "R_rect_00")
            p_rect = calib[key].reshape(3, 4)
            k = p_rect[:, :3].copy()
            gt_dir = drive / "proj_depth" / "groundtruth" / f"image_0{camera}"
            names = sorted(gt_dir.glob("*.png"), key=natural_key)
            extr: dict[int, np.ndarray] = {}
            if use_poses:
                extr = _oxts_extrinsics(raw, date_dir, p_rect, calib["R_rect_00"].reshape(3, 3),
                                        skips)
            refs = []
            for png in names:
                i = int(png.stem)
                if use_poses and i not in extr:
                    skips.skip("no pose", f"{drive.name} frame {i}: no oxts/data/{png.stem}.txt")
                    continue
                refs.append(FrameRef(index=i, paths={
                    "rgb": raw / f"image_0{camera}" / "data" / png.name, "depth": png},
                    intrinsics=k, extrinsics=extr.get(i)))
            yield from build_clips(
                refs, corpus=CORPUS, sequence=drive.name, clip_length=clip_length,
                stride=stride, load=_load, skips=skips, has_pose=use_poses, licence=LICENCE,
                meta={"camera": camera, "sky_handling": "none (sparse lidar, sky has no points)",
                      "pose_source": "OXTS GPS/IMU via the raw devkit's Mercator poses and "
                                     "IMU/velodyne/camera calibration" if use_poses else "none"},
            )
        skips.summary()

    return generate()


def _oxts_extrinsics(raw: Path, date_dir: Path, p_rect: np.ndarray, r_rect: np.ndarray,
                     skips: SkipLog) -> dict[int, np.ndarray]:
    files = sorted((raw / "oxts" / "data").glob("*.txt"), key=natural_key)
    rows, idx = [], []
    for f in files:
        try:
            vals = np.asarray(f.read_text().split(), dtype=np.float64)
        except (OSError, ValueError):
            skips.skip("bad oxts", f"{f}: unreadable OXTS record")
            continue
        if vals.size < 6:
            skips.skip("bad oxts", f"{f}: {vals.size} values, expected at least 6")
            continue
        rows.append(vals[:6])
        idx.append(int(f.stem))
    if not rows:
        raise ConverterError(f"{raw / 'oxts' / 'data'} has no readable OXTS record")
    imu_world = oxts_to_imu_poses(np.stack(rows))
    velo_cam = _rigid(read_calib(date_dir / "calib_velo_to_cam.txt"),
                      date_dir / "calib_velo_to_cam.txt")
    imu_velo = _rigid(read_calib(date_dir / "calib_imu_to_velo.txt"),
                      date_dir / "calib_imu_to_velo.txt")
    cam_imu = camera_from_imu(p_rect, r_rect, velo_cam, imu_velo)
    w2c = cam_imu @ np.linalg.inv(imu_world)  # orthonormalised later (printed precision)
    return dict(zip(idx, w2c))


def _load(ref: FrameRef) -> LoadedFrame:
    rgb = read_rgb(ref.paths["rgb"])
    depth = read_png16(ref.paths["depth"]).astype(np.float32) / 256.0
    if depth.shape != rgb.shape[:2]:
        raise FrameError(f"{ref.paths['depth']}: depth {depth.shape} vs image "
                         f"{rgb.shape[:2]}", "size mismatch")
    return LoadedFrame(rgb=rgb, depth=depth, intrinsics=ref.intrinsics,
                       extrinsics=ref.extrinsics)
