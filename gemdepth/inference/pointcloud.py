"""One fused, coloured point cloud from all frames, voxel-downsampled in bounded memory.

Each frame is back-projected as the official ``run_video_pointcloud``: depth = 1 / disparity
(pixels with disparity ≤ 1e-6 dropped; ``metric=True``: the values are depth in metres), with the frame's predicted intrinsics, moved to the
world by its predicted camera. Far points (depth beyond ``max_depth_ratio`` × the frame's
median depth, mostly sky) are dropped too. Points go into a voxel grid that keeps, per
occupied voxel, the sum of positions and colours and a count; the PLY holds one point per voxel
(centroid, mean colour). The grid never exceeds ``max_points`` voxels: when it would, the voxel
size grows by 1.5× and the grid is re-binned from its centroids. Voxel sums are merged with
``torch.unique`` over 63-bit voxel keys, in batches of frames (hand-written: no maintained
library offers a streaming, bounded voxel accumulator for torch/numpy).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gemdepth.inference.windowing import FrameResult

__all__ = ["PointCloudFuser", "write_ply"]

log = logging.getLogger(__name__)

_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_LIMIT = _OFFSET - 1


def _voxel_keys(points: Tensor, voxel: float) -> tuple[Tensor, Tensor]:
    """63-bit keys of the voxels holding ``points`` (N, 3) and the mask of points in range."""
    ijk = torch.floor(points / voxel)
    ok = (ijk.abs() < _LIMIT).all(-1)
    ijk = ijk[ok].to(torch.int64) + _OFFSET
    return (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2], ok


class PointCloudFuser:
    """Accumulates frames into a bounded voxel grid; ``write(path)`` saves a binary PLY.

    ``voxel_size`` None: chosen from the first frame (its median depth / 256). ``max_points``
    bounds the number of voxels (and so memory: about 64 bytes each). ``pixels_per_frame``
    bounds the pixels back-projected per frame (a regular subsampling grid).
    """

    def __init__(
        self,
        voxel_size: float | None = None,
        max_points: int = 1_000_000,
        pixels_per_frame: int = 65536,
        max_depth_ratio: float = 20.0,
        batch_points: int = 1 << 20,
        metric: bool = False,
    ) -> None:
        if voxel_size is not None and not voxel_size > 0:
            raise ValueError(f"voxel size must be > 0, got {voxel_size}")
        if max_points < 1:
            raise ValueError(f"max_points must be ≥ 1, got {max_points}")
        self.voxel = voxel_size
        self.max_points = int(max_points)
        self.pixels_per_frame = int(pixels_per_frame)
        self.max_depth_ratio = float(max_depth_ratio)
        self.batch_points = int(batch_points)
        self.metric = bool(metric)  # results hold metric depth (metres), not disparity
        self.keys = torch.empty(0, dtype=torch.int64)
        self.sums = torch.empty(0, 7, dtype=torch.float64)  # x, y, z, r, g, b, count
        self._pending: list[Tensor] = []
        self._pending_n = 0
        self.frames = 0
        self.frames_without_points = 0  # frames with no positive, finite disparity
        self.dropped_out_of_range = 0
        self.coarsened = 0

    # ------------------------------------------------------------------ input
    def add(self, result: FrameResult) -> None:
        """Back-project one frame (needs ``extrinsics``, ``intrinsics`` and ``image``)."""
        if result.extrinsics is None or result.intrinsics is None:
            raise ValueError("a fused point cloud needs predicted cameras (a model with GEM)")
        depth = torch.from_numpy(np.asarray(result.depth, dtype=np.float32))
        h, w = depth.shape
        step = max(1, math.ceil(math.sqrt(h * w / self.pixels_per_frame)))
        disp = depth[::step, ::step]
        v, u = torch.meshgrid(
            torch.arange(0, h, step, dtype=torch.float64), torch.arange(0, w, step, dtype=torch.float64), indexing="ij"
        )
        valid = torch.isfinite(disp) & (disp > 1e-6)
        if not bool(valid.any()):
            self.frames += 1
            self.frames_without_points += 1
            return
        z = disp[valid].to(torch.float64) if self.metric else 1.0 / disp[valid].to(torch.float64)
        median = float(z.median())
        near = z <= self.max_depth_ratio * median
        z, u, v = z[near], u[valid][near], v[valid][near]
        k = torch.from_numpy(np.asarray(result.intrinsics, dtype=np.float64))
        cam = torch.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z], -1)
        e = torch.from_numpy(np.asarray(result.extrinsics, dtype=np.float64))
        world = (cam - e[:3, 3]) @ e[:3, :3]  # R^T (x - t), row vectors
        if result.image is not None:
            rgb = torch.from_numpy(result.image[::step, ::step][valid.numpy()].astype(np.float64))[near]
        else:
            rgb = torch.full((world.shape[0], 3), 200.0, dtype=torch.float64)
        finite = torch.isfinite(world).all(-1)
        if self.voxel is None:
            self.voxel = max(median / 256.0, 1e-12)
        self._pending.append(
            torch.cat([world[finite], rgb[finite], torch.ones(int(finite.sum()), 1, dtype=torch.float64)], -1)
        )
        self._pending_n += int(finite.sum())
        self.frames += 1
        if self._pending_n >= self.batch_points:
            self._merge()

    # ------------------------------------------------------------------ grid
    def _bin(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        uniq, inverse = torch.unique(keys, return_inverse=True)
        sums = torch.zeros(uniq.shape[0], values.shape[1], dtype=torch.float64).index_add_(0, inverse, values)
        return uniq, sums

    def _merge(self) -> None:
        if not self._pending:
            return
        assert self.voxel is not None
        values = torch.cat(self._pending)
        self._pending, self._pending_n = [], 0
        keys, ok = _voxel_keys(values[:, :3], self.voxel)
        self.dropped_out_of_range += int((~ok).sum())
        self.keys, self.sums = self._bin(torch.cat([self.keys, keys]), torch.cat([self.sums, values[ok]]))
        while self.keys.shape[0] > self.max_points:
            self.voxel *= 1.5
            self.coarsened += 1
            centroids = self.sums[:, :3] / self.sums[:, 6:7]
            keys, ok = _voxel_keys(centroids, self.voxel)
            self.keys, self.sums = self._bin(keys, self.sums[ok])

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Centroids float32 ``(N, 3)`` and mean colours uint8 ``(N, 3)`` of the occupied voxels."""
        self._merge()
        count = self.sums[:, 6:7]
        xyz = (self.sums[:, :3] / count).to(torch.float32).numpy()
        rgb = (self.sums[:, 3:6] / count).round().clamp(0, 255).to(torch.uint8).numpy()
        return xyz, rgb

    def write(self, path: Path) -> int:
        """Write the PLY (atomically); returns the number of points.

        With no point at all (e.g. an all-zero prediction) nothing is written, a ``points.ply``
        left by an earlier run at ``path`` is removed (it would pass for this run's), a warning
        says why, and 0 is returned: an empty PLY would only look like a result.
        """
        path = Path(path)
        xyz, rgb = self.points()
        if xyz.shape[0] == 0:
            stale = path.exists()
            path.unlink(missing_ok=True)
            log.warning(
                "no %s%s: no frame gave a usable point (%d of %d frames have no positive disparity; "
                "an all-zero prediction usually means random or mismatched weights)",
                path.name,
                " (removed the earlier run's)" if stale else "",
                self.frames_without_points,
                self.frames,
            )
            return 0
        if self.coarsened:
            log.info(
                "point cloud: voxel size grown %d× to %.4g to keep ≤ %d points",
                self.coarsened,
                self.voxel,
                self.max_points,
            )
        comment = (
            f"gemdepth fused point cloud: {self.frames} frames, voxel {self.voxel:.6g} "
            + ("(metric depth, metres)" if self.metric else "(depth = 1/disparity, relative scale)")
        )
        write_ply(path, xyz, rgb, comment=comment)
        return int(xyz.shape[0])


_PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray, comment: str = "") -> None:
    """Binary little-endian PLY with float x, y, z and uchar red, green, blue (atomic write)."""
    from gemdepth.inference.writers import partial_path, replace_path

    path = Path(path)
    data = np.empty(xyz.shape[0], dtype=_PLY_DTYPE)
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    lines = ["ply", "format binary_little_endian 1.0"]
    if comment:
        lines.append("comment " + comment.replace("\n", " "))
    lines += [
        f"element vertex {xyz.shape[0]}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "end_header",
    ]
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode("ascii"))
            f.write(data.tobytes())
        replace_path(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
