"""Bonn RGB-D Dynamic (Palazzolo et al., IROS 2019): the TUM layout with Bonn's calibration.

Each sequence folder (``rgbd_bonn_balloon/`` ...) has ``rgb.txt``, ``depth.txt``,
``groundtruth.txt`` (``timestamp tx ty tz qx qy qz qw``), ``rgb/`` and ``depth/`` (16-bit,
metres = value / 5000) exactly like TUM RGB-D, and is converted by the same code
(:mod:`gemdepth.data.converters.tum`: one-to-one timestamp association within 0.02 s,
pose interpolated at the rgb timestamp).

Two things differ, both from the dataset's documentation page:

* intrinsics fx 542.822841, fy 542.576870, cx 315.593520, cy 237.756098 (distortion
  0.039903, -0.099343, -0.000730, -0.000144, 0; removed only with ``undistort=True``);
* ``groundtruth.txt`` holds the pose of the motion-capture *marker body* in the mocap's ROS
  frame, not the camera. The documented correction gives the camera's camera-to-world pose
  ``T_ros · T_gt · T_ros · T_m`` (``T_ros`` swaps the mocap axes and is its own inverse;
  ``T_m`` is the camera-to-marker calibration). The published ``T_m`` rotation block is a
  rotation times a uniform factor 1.059 (not a rigid transform); we use its nearest rotation
  (polar decomposition), keep its translation, and say so in ``meta["pose_source"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gemdepth.data.converters._common import parse_floats
from gemdepth.data.converters.tum import DEPTH_SCALE, TumCamera, tum_like_clips

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "CAMERA", "T_ROS", "T_M", "marker_to_camera", "iter_clips"]

CORPUS = "bonn"
#: ``-o key=value`` options of ``gemdepth data convert bonn`` and their meaning.
OPTIONS: dict[str, str] = {
    'max_difference': 'max rgb-depth timestamp difference for association (s)',
    'pose_tolerance': 'max distance to the nearest ground-truth pose sample (s)',
    'undistort': 'true: remove the documented lens distortion',
    'poses': 'false: write a pose-free corpus',
    'pose_time': 'rgb or depth: which timestamp the pose is interpolated at',
    'marker_correction': 'false: use groundtruth.txt as the camera pose (already corrected data)',
    'intrinsics': 'fx,fy,cx,cy overriding the documented camera',
}
LICENCE = "CC-BY-NC-SA-4.0 (Bonn RGB-D Dynamic Dataset terms)"
LAYOUT = ("<sequence>/{rgb.txt, depth.txt, groundtruth.txt, rgb/*.png, depth/*.png} "
          "(Bonn RGB-D Dynamic = TUM layout; ROOT may be one sequence or a folder of them)")

CAMERA = TumCamera(542.822841, 542.576870, 315.593520, 237.756098,
                   (0.039903, -0.099343, -0.000730, -0.000144, 0.0))

#: Axis swap between the mocap's ROS frame and the dataset's reference frame (self-inverse).
T_ROS = np.array([[-1.0, 0.0, 0.0, 0.0],
                  [0.0, 0.0, 1.0, 0.0],
                  [0.0, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 1.0]])
#: Camera-to-marker calibration as published (rotation block scaled by ~1.059).
T_M = np.array([[1.0157, 0.1828, -0.2389, 0.0113],
                [0.0009, -0.8431, -0.6413, -0.0098],
                [-0.3009, 0.6147, -0.8085, 0.0111],
                [0.0, 0.0, 0.0, 1.0]])


def _rigid_t_m() -> np.ndarray:
    """``T_M`` with its rotation block replaced by the nearest rotation (SVD polar factor)."""
    u, _, vt = np.linalg.svd(T_M[:3, :3])
    rot = u @ vt
    if np.linalg.det(rot) < 0:  # pragma: no cover - the published block has det > 0
        u[:, -1] *= -1
        rot = u @ vt
    out = T_M.copy()
    out[:3, :3] = rot
    return out


T_M_RIGID = _rigid_t_m()


def marker_to_camera(c2w_marker: np.ndarray) -> np.ndarray:
    """Camera-to-world ``(..., 4, 4)`` of the camera from groundtruth marker poses."""
    return T_ROS @ c2w_marker @ T_ROS @ T_M_RIGID


def iter_clips(
    root: Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    max_difference: float = 0.02,
    pose_tolerance: float = 0.02,
    undistort: bool = False,
    poses: bool = True,
    pose_time: str = "rgb",
    marker_correction: bool = True,
    intrinsics: tuple[float, float, float, float] | str | None = None,
) -> Iterator[dict]:
    """Clips of Bonn RGB-D Dynamic sequences under ``root`` (see the module docstring).

    ``marker_correction=False`` uses ``groundtruth.txt`` as the camera pose directly (only
    for data already corrected by another tool); ``intrinsics=(fx, fy, cx, cy)`` overrides the
    documented camera (no distortion model).
    """

    given = parse_floats(intrinsics, 4, "intrinsics (fx, fy, cx, cy)")

    def camera_for(seq: Path) -> tuple[str, TumCamera]:
        if given is not None:
            return "given", TumCamera(*given)
        return "bonn", CAMERA

    note = ("groundtruth.txt marker pose corrected to the camera by T_ros·T_gt·T_ros·T_m "
            "(T_m rotation orthonormalised), interpolated" if marker_correction
            else "groundtruth.txt used as camera-to-world (no marker correction), interpolated")
    return tum_like_clips(
        root, clip_length, stride, corpus=CORPUS, licence=LICENCE, layout=LAYOUT,
        camera_for=camera_for, c2w_fix=marker_to_camera if marker_correction else None,
        max_difference=max_difference, pose_tolerance=pose_tolerance, undistort=undistort,
        poses=poses, depth_scale=DEPTH_SCALE, pose_note=note, pose_time=pose_time,
    )
