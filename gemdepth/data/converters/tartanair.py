"""TartanAir (Wang et al., IROS 2020) in its published layout.

One trajectory folder (``<env>/<Easy|Hard>/P000/``) holds::

    image_left/000000_left.png        640x480 RGB
    depth_left/000000_left_depth.npy  float32 depth in metres (z-depth); the sky sphere is
                                      far away (about 10 km) rather than infinite
    pose_left.txt                     one "tx ty tz qx qy qz qw" line per frame: the camera
                                      pose in the world, camera-to-world, NED axes
                                      (x forward, y right, z down)

Intrinsics are fixed: fx = fy = 320, cx = 320, cy = 240 (a 90° horizontal FoV pinhole at
640×480); other image sizes get the same 90° FoV, ``fx = fy = cx = W/2``, ``cy = H/2``.

Conversion: the NED camera body axes map to OpenCV camera axes by
``p_cv = (y_ned, z_ned, x_ned)``; with ``P`` that permutation, the OpenCV camera-to-world is
``[R·Pᵀ | t]`` and it is inverted into world-to-camera. Depth at or beyond ``sky_depth``
(1000 m by default) is marked ``sky`` and stored as 0. ``camera="right"`` converts the
right camera (``image_right``, ``depth_right``, ``pose_right.txt``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gemdepth.data.converters._common import (
    ConverterError,
    FrameError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    intrinsics_matrix,
    natural_key,
    note_invalid_depth,
    pose_from_c2w,
    read_rgb,
    require_dir,
)
from gemdepth.geometry import quat_to_rotmat

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "K", "NED_TO_CV", "ned_c2w_to_w2c", "intrinsics_for", "iter_clips"]

CORPUS = "tartanair"
LICENCE = "CC-BY-4.0"
#: ``-o key=value`` options of ``gemdepth data convert tartanair`` and their meaning.
OPTIONS: dict[str, str] = {
    'camera': 'left or right',
    'sky_depth': 'depth (m) at or beyond which a pixel is sky (mask, depth 0)',
}
LAYOUT = ("<env>/<Easy|Hard>/P<nnn>/{image_left/<n>_left.png, depth_left/<n>_left_depth.npy, "
          "pose_left.txt}")
K = intrinsics_matrix(320.0, 320.0, 320.0, 240.0)


def intrinsics_for(height: int, width: int) -> np.ndarray:
    """The TartanAir pinhole (90° horizontal FoV, centred) for an image size (K at 640×480)."""
    return intrinsics_matrix(width / 2.0, width / 2.0, width / 2.0, height / 2.0)

#: Rows give OpenCV camera axes in NED body axes: p_cv = NED_TO_CV @ p_ned.
NED_TO_CV = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def ned_c2w_to_w2c(rows: np.ndarray) -> np.ndarray:
    """World-to-camera OpenCV ``(N, 4, 4)`` of TartanAir pose rows ``(N, 7)`` (NED, c2w)."""
    rot = quat_to_rotmat(torch.from_numpy(np.asarray(rows[:, 3:], dtype=np.float64))).numpy()
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = rot @ NED_TO_CV.T
    c2w[:, :3, 3] = rows[:, :3]
    return pose_from_c2w(c2w)


def _read_poses(path: Path) -> np.ndarray:
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ConverterError(f"{path}: not a table of numbers ({exc})") from exc
    if rows.shape[1] != 7:
        raise ConverterError(f"{path}: expected 7 columns 'tx ty tz qx qy qz qw', got "
                             f"{rows.shape[1]}")
    return rows


def iter_clips(
    root: Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    camera: str = "left",
    sky_depth: float = 1000.0,
) -> Iterator[dict]:
    """Clips of every trajectory (folder with ``pose_<camera>.txt``) under ``root``."""
    if camera not in ("left", "right"):
        raise ConverterError(f"camera must be 'left' or 'right', got {camera!r}")
    root = as_path(root)
    pose_name = f"pose_{camera}.txt"
    trajs = sorted({p.parent for p in root.rglob(pose_name)}, key=natural_key)
    if not trajs:
        raise ConverterError(f"no {pose_name} under {root}; expected layout: {LAYOUT}")
    for t in trajs:
        require_dir(t / f"image_{camera}", LAYOUT)
        require_dir(t / f"depth_{camera}", LAYOUT)
    skips = SkipLog(CORPUS)

    def generate() -> Iterator[dict]:
        for traj in trajs:
            rows = _read_poses(traj / pose_name)
            extr = ned_c2w_to_w2c(rows)
            images = sorted(traj.glob(f"image_{camera}/*_{camera}.png"), key=natural_key)
            if len(images) != len(rows):
                raise ConverterError(f"{traj}: {len(images)} images but {len(rows)} poses in "
                                     f"{pose_name} (one pose line per frame expected)")
            refs = []
            for i, img in enumerate(images):
                stem = img.stem.split("_")[0]
                refs.append(FrameRef(
                    index=i,
                    paths={"rgb": img,
                           "depth": traj / f"depth_{camera}" / f"{stem}_{camera}_depth.npy"},
                    extrinsics=extr[i]))
            rel = traj.relative_to(root) if traj != root else Path(traj.name)
            name = "_".join(rel.parts) or traj.name

            def load(ref: FrameRef) -> LoadedFrame:
                rgb = read_rgb(ref.paths["rgb"])
                try:
                    depth = np.load(ref.paths["depth"]).astype(np.float32)
                except (OSError, ValueError) as exc:
                    raise FrameError(f"{ref.paths['depth']}: unreadable depth ({exc})") from exc
                if depth.ndim != 2:
                    raise FrameError(f"{ref.paths['depth']}: expected (H, W), got {depth.shape}")
                sky = ~np.isfinite(depth) | (depth >= sky_depth)
                note_invalid_depth(depth, exclude=sky)
                depth = np.where(sky | (depth < 0), 0.0, depth).astype(np.float32)
                if depth.shape != rgb.shape[:2]:
                    raise FrameError(f"{ref.paths['depth']}: depth {depth.shape} vs image "
                                     f"{rgb.shape[:2]}", "size mismatch")
                return LoadedFrame(rgb=rgb, depth=depth, intrinsics=intrinsics_for(*depth.shape),
                                   extrinsics=ref.extrinsics, sky=sky)

            yield from build_clips(
                refs, corpus=CORPUS, sequence=name, clip_length=clip_length, stride=stride,
                load=load, skips=skips, licence=LICENCE,
                meta={"sky_handling": f"depth >= {sky_depth} m -> sky mask, depth 0",
                      "camera": camera, "pose_source": "NED camera-to-world -> OpenCV w2c"},
            )
        skips.summary()

    return generate()
