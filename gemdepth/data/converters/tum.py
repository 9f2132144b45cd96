"""TUM RGB-D (Sturm et al., IROS 2012) in its published layout, and the machinery Bonn reuses.

Layout of one sequence folder (e.g. ``rgbd_dataset_freiburg1_xyz/``)::

    rgb.txt          "timestamp rgb/<timestamp>.png" per line, '#' comment lines
    depth.txt        "timestamp depth/<timestamp>.png"
    groundtruth.txt  "timestamp tx ty tz qx qy qz qw": colour camera optical centre in the
                     mocap world (camera-to-world, quaternion scalar last)
    rgb/*.png        640x480 colour
    depth/*.png      16-bit, metres = value / 5000, 0 = no measurement

Conversion (as the dataset's tools do it):

* rgb and depth are associated one-to-one by nearest timestamp within ``max_difference``
  (0.02 s) exactly like the dataset's ``associate.py`` (candidate pairs sorted by time
  difference, taken greedily); rgb frames without a partner are skipped (counted);
* the pose at the rgb timestamp is interpolated between the two bracketing ground-truth
  samples (linear position, slerp rotation) when the nearer one is within
  ``pose_tolerance`` s; otherwise the frame is skipped (counted);
* camera-to-world is inverted into world-to-camera (the TUM camera frame already has OpenCV
  axes: x right, y down, z forward);
* intrinsics come from the TUM documentation per camera (``fr1``/``fr2``/``fr3``, detected
  from the ``# file: 'rgbd_dataset_freiburg…'`` header line of ``rgb.txt``/``depth.txt`` or
  from the folder name (they must agree), or ``camera=``); ``undistort=True`` removes the documented lens
  distortion (fr1, fr2) by resampling colour (bilinear) and depth (nearest) onto the same K.

The frame index of a clip frame is its row in ``rgb.txt`` (0-based).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gemdepth.data.converters._common import (
    ConverterError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    intrinsics_matrix,
    parse_floats,
    pose_from_c2w,
    read_png16,
    read_rgb,
    require_file,
)
from gemdepth.geometry import quat_to_rotmat

__all__ = ["CORPUS", "LICENCE", "CAMERAS", "OPTIONS", "iter_clips", "associate", "read_tum_list",
           "interpolate_poses", "TumCamera", "detect_tum_camera", "header_camera"]

CORPUS = "tum"
#: ``-o key=value`` options of ``gemdepth data convert tum`` and their meaning.
OPTIONS: dict[str, str] = {
    'camera': 'fr1, fr2, fr3 or ros-default (default: from the rgb.txt header or folder name)',
    'max_difference': 'max rgb-depth timestamp difference for association (s)',
    'pose_tolerance': 'max distance to the nearest ground-truth pose sample (s)',
    'undistort': 'true: remove the documented lens distortion (fr1, fr2)',
    'poses': 'false: write a pose-free corpus',
    'pose_time': 'rgb or depth: which timestamp the pose is interpolated at',
    'intrinsics': 'fx,fy,cx,cy overriding the documented camera',
}
LICENCE = "CC-BY-4.0"
LAYOUT = ("<sequence>/{rgb.txt, depth.txt, groundtruth.txt, rgb/*.png, depth/*.png} "
          "(TUM RGB-D layout; ROOT may be one sequence or a folder of sequences)")
DEPTH_SCALE = 5000.0


@dataclass(frozen=True)
class TumCamera:
    """Pinhole intrinsics and OpenCV distortion ``(k1, k2, p1, p2, k3)`` of a dataset camera."""

    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name
        return intrinsics_matrix(self.fx, self.fy, self.cx, self.cy)


#: The colour cameras of the TUM RGB-D documentation ("ros-default" is the uncalibrated
#: default the TUM docs recommend for depth-only use).
CAMERAS: dict[str, TumCamera] = {
    "fr1": TumCamera(517.3, 516.5, 318.6, 255.3, (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "fr2": TumCamera(520.9, 521.0, 325.1, 249.7, (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "fr3": TumCamera(535.4, 539.2, 320.1, 247.6),
    "ros-default": TumCamera(525.0, 525.0, 319.5, 239.5),
}


# --------------------------------------------------------------------------- text files
def read_tum_list(path: Path, columns: int) -> tuple[np.ndarray, list[list[str]]]:
    """Timestamps and remaining fields of a TUM list file (``#`` lines are comments).

    ``columns`` is the number of fields after the timestamp; a malformed line raises
    :class:`ConverterError` naming the file and line.
    """
    times: list[float] = []
    rows: list[list[str]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != columns + 1:
            raise ConverterError(f"{path}:{lineno}: expected {columns + 1} fields "
                                 f"(timestamp + {columns}), got {len(fields)}: {line!r}")
        try:
            times.append(float(fields[0]))
        except ValueError as exc:
            raise ConverterError(f"{path}:{lineno}: bad timestamp {fields[0]!r}") from exc
        rows.append(fields[1:])
    return np.asarray(times, dtype=np.float64), rows


def associate(first: np.ndarray, second: np.ndarray, max_difference: float = 0.02,
              offset: float = 0.0) -> list[tuple[int, int]]:
    """One-to-one pairs ``(i, j)`` with ``|first[i] - (second[j] + offset)| < max_difference``.

    The behaviour of the TUM tool ``associate.py``: all candidate pairs are sorted by time
    difference and taken greedily, each index at most once; the result is sorted by ``i``.
    """
    second_shifted = second + offset
    order = np.argsort(second_shifted)
    sorted_second = second_shifted[order]
    lo = np.searchsorted(sorted_second, first - max_difference, side="left")
    hi = np.searchsorted(sorted_second, first + max_difference, side="right")
    cands: list[tuple[float, int, int]] = []
    for i, (a, b) in enumerate(zip(lo, hi)):
        for k in range(a, b):
            diff = abs(first[i] - sorted_second[k])
            if diff < max_difference:
                cands.append((diff, i, int(order[k])))
    cands.sort()
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for _, i, j in cands:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def _slerp(q0: np.ndarray, q1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit quaternions ``(N, 4)`` with weights ``w (N,)``."""
    dot = (q0 * q1).sum(-1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(max=1.0)
    theta = np.arccos(dot)
    small = theta < 1e-8
    s = np.sin(np.where(small, 1.0, theta))
    a = np.where(small, 1.0 - w, np.sin((1.0 - w) * theta) / s)
    b = np.where(small, w, np.sin(w * theta) / s)
    q = a[:, None] * q0 + b[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def interpolate_poses(gt_times: np.ndarray, gt: np.ndarray, query: np.ndarray,
                      tolerance: float = 0.02, max_span: float = 0.1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world 4×4 at ``query`` times from ``gt (N, 7)`` rows ``tx ty tz qx qy qz qw``.

    Linear position and slerp rotation between the bracketing samples; a query is ``ok`` when
    the nearer bracketing sample is within ``tolerance`` s and the bracket spans at most
    ``max_span`` s (a tracking gap otherwise). Queries just outside the range use the end
    sample when within ``tolerance``. Returns ``(c2w (Q, 4, 4), ok (Q,))``.
    """
    order = np.argsort(gt_times)
    gt_times, gt = gt_times[order], gt[order]
    n = len(gt_times)
    hi = np.searchsorted(gt_times, query, side="left").clip(1, n - 1)
    lo = hi - 1
    t0, t1 = gt_times[lo], gt_times[hi]
    span = np.maximum(t1 - t0, 1e-12)
    w = ((query - t0) / span).clip(0.0, 1.0)
    near = np.minimum(np.abs(query - t0), np.abs(query - t1))
    ok = (near <= tolerance) & ((span <= max_span) | (w == 0) | (w == 1))
    pos = (1 - w)[:, None] * gt[lo, :3] + w[:, None] * gt[hi, :3]
    q0 = gt[lo, 3:] / np.linalg.norm(gt[lo, 3:], axis=-1, keepdims=True)
    q1 = gt[hi, 3:] / np.linalg.norm(gt[hi, 3:], axis=-1, keepdims=True)
    quat = _slerp(q0, q1, w)
    rot = quat_to_rotmat(torch.from_numpy(quat)).numpy()
    c2w = np.tile(np.eye(4), (len(query), 1, 1))
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = pos
    return c2w, ok


# --------------------------------------------------------------------------- undistortion
def undistort_maps(cam: TumCamera, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid ``(1, H, W, 2)`` mapping undistorted pixels to distorted ones.

    The forward Brown-Conrady model is closed-form, so no iterative inversion is needed:
    for every output pixel we compute where it lies in the distorted (recorded) image.
    """
    k1, k2, p1, p2, k3 = cam.dist
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                       indexing="ij")
    x = (u - cam.cx) / cam.fx
    y = (v - cam.cy) / cam.fy
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    ud = xd * cam.fx + cam.cx
    vd = yd * cam.fy + cam.cy
    grid = np.stack([2 * ud / (width - 1) - 1, 2 * vd / (height - 1) - 1], axis=-1)
    return torch.from_numpy(grid).float()[None]


def _remap(img: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img).astype(np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(t, grid, mode=mode, padding_mode="zeros",
                                          align_corners=True)[0]
    out = out[0] if img.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy()


# --------------------------------------------------------------------------- conversion
def find_sequences(root: Path, marker: str = "rgb.txt") -> list[Path]:
    """``root`` itself when it holds ``marker``, else its sub-folders (two levels) that do."""
    if (root / marker).is_file():
        return [root]
    found = sorted({p.parent for p in root.glob(f"*/{marker}")} |
                   {p.parent for p in root.glob(f"*/*/{marker}")})
    return found


def detect_tum_camera(name: str) -> str | None:
    """``fr1``/``fr2``/``fr3`` from a sequence folder name, or None."""
    m = re.search(r"freiburg([123])", name) or re.search(r"(?:^|[^a-z0-9])fr([123])(?:[^0-9]|$)",
                                                         name.lower())
    return f"fr{m.group(1)}" if m else None


_FILE_HEADER = re.compile(r"^#\s*file:\s*['\"]?([^'\"]+)['\"]?\s*$")


def header_camera(seq: Path) -> tuple[str, str] | None:
    """``(camera, where)`` from the ``# file: 'rgbd_dataset_freiburg1_xyz.bag'`` header line of a
    sequence's ``rgb.txt``/``depth.txt`` (the recording's own name, which survives renamed
    folders), or None when no header names a camera. Headers that disagree raise."""
    found: dict[str, str] = {}
    for name in ("rgb.txt", "depth.txt"):
        path = seq / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    break  # headers only: the comment block at the top
                m = _FILE_HEADER.match(line)
                cam = detect_tum_camera(m.group(1)) if m else None
                if cam is not None:
                    found[f"{path} ({m.group(1)})"] = cam
    if len(set(found.values())) > 1:
        raise ConverterError(f"{seq}: the file headers name different cameras {found}; pass "
                             f"camera= one of {sorted(CAMERAS)}")
    return next(((cam, where) for where, cam in found.items()), None)


def tum_like_clips(
    root: Path,
    clip_length: int,
    stride: int,
    *,
    corpus: str,
    licence: str,
    layout: str,
    camera_for: Callable[[Path], tuple[str, TumCamera]],
    c2w_fix: Callable[[np.ndarray], np.ndarray] | None,
    max_difference: float,
    pose_tolerance: float,
    undistort: bool,
    poses: bool,
    depth_scale: float,
    pose_note: str,
    pose_time: str = "rgb",
) -> Iterator[dict]:
    """Shared TUM-layout conversion (TUM and Bonn differ in cameras and pose calibration)."""
    if pose_time not in ("rgb", "depth"):
        raise ConverterError(f"pose_time must be 'rgb' or 'depth', got {pose_time!r}")
    root = as_path(root)
    seqs = find_sequences(root)
    if not seqs:
        raise ConverterError(f"no rgb.txt in {root} or its sub-folders; expected layout: {layout}")
    plans = []
    for seq in seqs:
        for name in ("rgb.txt", "depth.txt") + (("groundtruth.txt",) if poses else ()):
            require_file(seq / name, layout)
        cam_name, cam = camera_for(seq)
        plans.append((seq, cam_name, cam))
    skips = SkipLog(corpus)

    def generate() -> Iterator[dict]:
        for seq, cam_name, cam in plans:
            yield from _sequence(seq, cam_name, cam)
        skips.summary()

    def _sequence(seq: Path, cam_name: str, cam: TumCamera) -> Iterator[dict]:
        rgb_t, rgb_rows = read_tum_list(seq / "rgb.txt", 1)
        dep_t, dep_rows = read_tum_list(seq / "depth.txt", 1)
        pairs = dict(associate(rgb_t, dep_t, max_difference))
        for i in range(len(rgb_t)):
            if i not in pairs:
                skips.skip("no depth", f"{seq.name} rgb row {i} ({rgb_rows[i][0]}): no depth "
                                       f"frame within {max_difference} s (one-to-one)")
        idx = sorted(pairs)
        c2w = ok = None
        if poses:
            gt_t, gt_rows = read_tum_list(seq / "groundtruth.txt", 7)
            if len(gt_t) < 2:
                raise ConverterError(f"{seq / 'groundtruth.txt'} has fewer than 2 poses")
            gt = np.asarray(gt_rows, dtype=np.float64)
            query = rgb_t.copy()
            if pose_time == "depth":  # the depth map's own capture time
                for i, j in pairs.items():
                    query[i] = dep_t[j]
            c2w, ok = interpolate_poses(gt_t, gt, query, tolerance=pose_tolerance)
            if c2w_fix is not None:
                c2w = c2w_fix(c2w)
        refs = []
        for i in idx:
            if poses and not ok[i]:
                skips.skip("no pose", f"{seq.name} rgb row {i}: no ground-truth pose within "
                                      f"{pose_tolerance} s of {rgb_t[i]:.6f}")
                continue
            refs.append(FrameRef(
                index=i,
                paths={"rgb": seq / rgb_rows[i][0], "depth": seq / dep_rows[pairs[i]][0]},
                intrinsics=cam.K,
                extrinsics=pose_from_c2w(c2w[i]) if poses else None,
                extra={"timestamps": float(rgb_t[i]), "depth_timestamp": float(dep_t[pairs[i]])},
            ))
        grids: dict[tuple[int, int], torch.Tensor] = {}

        def load(ref: FrameRef) -> LoadedFrame:
            rgb = read_rgb(ref.paths["rgb"])
            raw = read_png16(ref.paths["depth"])
            depth = raw.astype(np.float32) / depth_scale
            if undistort and any(cam.dist):
                h, w = depth.shape
                grid = grids.setdefault((h, w), undistort_maps(cam, h, w))
                rgb = _remap(rgb, grid, "bilinear").round().clip(0, 255).astype(np.uint8)
                depth = _remap(depth, grid, "nearest").astype(np.float32)
            return LoadedFrame(rgb=rgb, depth=depth, intrinsics=ref.intrinsics,
                               extrinsics=ref.extrinsics, extra=ref.extra)

        yield from build_clips(
            refs, corpus=corpus, sequence=seq.name, clip_length=clip_length, stride=stride,
            load=load, skips=skips, depth_kind="metric", has_pose=poses, licence=licence,
            meta={"camera": cam_name, "undistorted": bool(undistort and any(cam.dist)),
                  "depth_scale": depth_scale,
                  "pose_source": f"{pose_note} at the {pose_time} timestamp" if poses else "none",
                  "sky_handling": "none (indoor)"},
            per_frame_meta=("timestamps",),
        )

    return generate()


def _missing_camera(seq: Path) -> ConverterError:
    return ConverterError(
        f"cannot tell the TUM camera of {seq} (no 'freiburg1/2/3' or 'fr1/2/3' in the folder "
        "name nor in a \"# file: 'rgbd_dataset_freiburg…'\" header line of rgb.txt/depth.txt); "
        f"pass -o camera= one of {sorted(CAMERAS)}")


def iter_clips(
    root: Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    camera: str | None = None,
    max_difference: float = 0.02,
    pose_tolerance: float = 0.02,
    undistort: bool = False,
    poses: bool = True,
    pose_time: str = "rgb",
    intrinsics: tuple[float, float, float, float] | str | None = None,
) -> Iterator[dict]:
    """Clips of TUM RGB-D sequences under ``root`` (see the module docstring).

    ``pose_time="depth"`` interpolates each frame's pose at its depth map's timestamp
    instead of the rgb one (up to 20 ms apart); ``poses=False`` writes a pose-free corpus;
    ``intrinsics=(fx, fy, cx, cy)`` overrides the documented camera (no distortion model).
    """
    given = parse_floats(intrinsics, 4, "intrinsics (fx, fy, cx, cy)")
    if camera is not None and camera not in CAMERAS:
        raise ConverterError(f"unknown TUM camera {camera!r}; choose one of {sorted(CAMERAS)}")

    def camera_for(seq: Path) -> tuple[str, TumCamera]:
        if given is not None:
            return "given", TumCamera(*given)
        if camera is not None:
            return camera, CAMERAS[camera]
        from_name, from_header = detect_tum_camera(seq.name), header_camera(seq)
        if from_name and from_header and from_name != from_header[0]:
            raise ConverterError(f"{seq}: the folder name says {from_name} but {from_header[1]} "
                                 f"says {from_header[0]}; pass -o camera= to choose")
        name = from_header[0] if from_header else from_name
        if name is None:
            raise _missing_camera(seq)
        return name, CAMERAS[name]

    return tum_like_clips(
        root, clip_length, stride, corpus=CORPUS, licence=LICENCE, layout=LAYOUT,
        camera_for=camera_for, c2w_fix=None, max_difference=max_difference,
        pose_tolerance=pose_tolerance, undistort=undistort, poses=poses,
        depth_scale=DEPTH_SCALE, pose_time=pose_time,
        pose_note="groundtruth.txt camera-to-world, interpolated",
    )
