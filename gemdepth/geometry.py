"""Camera and pose conventions shared by data, losses, metrics, models and inference.

Conventions (see ``../shared/design.md`` §3):

* extrinsics are world-to-camera 4×4 ``[R | t; 0 0 0 1]`` in OpenCV axes (x right, y down,
  z forward);
* intrinsics are 3×3 in pixels of the image they belong to;
* quaternions are scalar-last ``(x, y, z, w)`` wherever they meet the official pose encoding;
* a pose encoding is ``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]`` (the official layout).

Everything here is batched over arbitrary leading dimensions and differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "quat_to_rotmat",
    "rotmat_to_quat",
    "quat_multiply",
    "quat_inverse",
    "compose_extrinsics",
    "invert_rigid",
    "relative_to_first",
    "pose_encoding_to_cameras",
    "cameras_to_pose_encoding",
    "fov_to_intrinsics",
    "intrinsics_to_fov",
    "backproject",
    "transform_points",
    "project",
    "camera_centres",
    "fit_scale_shift",
    "umeyama",
]


# --------------------------------------------------------------------------- quaternions
def quat_to_rotmat(quat: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` of scalar-last quaternions ``(..., 4)``.

    The quaternion need not be unit: it is divided by its norm first, which is the same
    function as the official ``2/|q|²`` form. Hand-written (kornia's
    ``quaternion_to_rotation_matrix`` arithmetic, bit for bit) because importing kornia adds
    21 MiB to the resident set of every inference process, whose only use of it is this.
    """
    quat = quat / quat.norm(dim=-1, keepdim=True)
    wxyz = torch.cat([quat[..., 3:4], quat[..., :3]], dim=-1)
    wxyz = wxyz / torch.linalg.vector_norm(wxyz, dim=-1, keepdim=True).clamp_min(1e-12)  # kornia's normalisation
    w, x, y, z = wxyz.unbind(-1)
    tx, ty, tz = 2.0 * x, 2.0 * y, 2.0 * z
    twx, twy, twz = tx * w, ty * w, tz * w
    txx, txy, txz = tx * x, ty * x, tz * x
    tyy, tyz, tzz = ty * y, tz * y, tz * z
    flat = torch.stack(
        (
            1.0 - (tyy + tzz), txy - twz, txz + twy,
            txy + twz, 1.0 - (txx + tzz), tyz - twx,
            txz - twy, tyz + twx, 1.0 - (txx + tyy),
        ),
        dim=-1,
    )
    return flat.reshape(*quat.shape[:-1], 3, 3)


def rotmat_to_quat(rotmat: Tensor) -> Tensor:
    """Scalar-last unit quaternions ``(..., 4)`` with ``w >= 0`` of rotation matrices."""
    from kornia.geometry.conversions import rotation_matrix_to_quaternion  # imported on use (21 MiB resident)

    wxyz = rotation_matrix_to_quaternion(rotmat.contiguous(), eps=1e-12)
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def quat_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product ``q1 ⊗ q2`` of scalar-last quaternions."""
    x1, y1, z1, w1 = q1.unbind(-1)
    x2, y2, z2, w2 = q2.unbind(-1)
    return torch.stack(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ],
        dim=-1,
    )


def quat_inverse(quat: Tensor) -> Tensor:
    """Inverse ``conj(q) / |q|²`` of a (not necessarily unit) scalar-last quaternion."""
    conj = torch.cat([-quat[..., :3], quat[..., 3:]], dim=-1)
    return conj / (quat * quat).sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- rigid poses
def compose_extrinsics(rotmat: Tensor, trans: Tensor) -> Tensor:
    """4×4 matrices ``[R | t; 0 0 0 1]`` from ``R (..., 3, 3)`` and ``t (..., 3)``."""
    top = torch.cat([rotmat, trans.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def invert_rigid(pose: Tensor) -> Tensor:
    """Inverse of rigid 4×4 transforms in closed form (``Rᵀ``, ``-Rᵀt``)."""
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ pose[..., :3, 3:4]).squeeze(-1)
    return compose_extrinsics(rot_t, trans)


def relative_to_first(extrinsics: Tensor) -> Tensor:
    """World-to-camera poses ``(..., T, 4, 4)`` re-expressed with frame 0's camera as world.

    ``E_t' = E_t · E_0⁻¹`` so that frame 0 becomes the identity.
    """
    return extrinsics @ invert_rigid(extrinsics[..., :1, :, :])


def camera_centres(extrinsics: Tensor) -> Tensor:
    """Camera centres in world coordinates ``(..., 3)`` of world-to-camera poses."""
    return invert_rigid(extrinsics)[..., :3, 3]


# --------------------------------------------------------------------------- intrinsics
def fov_to_intrinsics(fov_h: Tensor, fov_w: Tensor, height: int, width: int) -> Tensor:
    """Pinhole intrinsics with the principal point at the image centre, from FoV in radians.

    Follows the official encoding exactly: no clamp and no epsilon, so FoV 0 gives ``inf``
    and FoV > π a negative focal length.
    """
    fy = (height / 2.0) / torch.tan(fov_h / 2.0)
    fx = (width / 2.0) / torch.tan(fov_w / 2.0)
    intr = torch.zeros(*fx.shape, 3, 3, dtype=fx.dtype, device=fx.device)
    intr[..., 0, 0] = fx
    intr[..., 1, 1] = fy
    intr[..., 0, 2] = width / 2.0
    intr[..., 1, 2] = height / 2.0
    intr[..., 2, 2] = 1.0
    return intr


def intrinsics_to_fov(intrinsics: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Vertical and horizontal FoV (radians) of pinhole intrinsics for an image size."""
    fov_h = 2.0 * torch.atan((height / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2.0 * torch.atan((width / 2.0) / intrinsics[..., 0, 0])
    return fov_h, fov_w


def pose_encoding_to_cameras(pose_enc: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Extrinsics ``(..., 4, 4)`` and intrinsics ``(..., 3, 3)`` of 9-d pose encodings."""
    rot = quat_to_rotmat(pose_enc[..., 3:7])
    extr = compose_extrinsics(rot, pose_enc[..., :3])
    intr = fov_to_intrinsics(pose_enc[..., 7], pose_enc[..., 8], height, width)
    return extr, intr


def cameras_to_pose_encoding(
    extrinsics: Tensor, intrinsics: Tensor, height: int, width: int
) -> Tensor:
    """9-d pose encodings of world-to-camera extrinsics and pixel intrinsics."""
    quat = rotmat_to_quat(extrinsics[..., :3, :3])
    fov_h, fov_w = intrinsics_to_fov(intrinsics, height, width)
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1)


# --------------------------------------------------------------------------- points
def _pixel_grid(height: int, width: int, like: Tensor) -> Tensor:
    """Homogeneous pixel centres ``(H, W, 3)``: pixel (u, v) has centre (u, v) (OpenCV)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def backproject(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-frame 3D points ``(..., H, W, 3)`` of z-depth maps ``(..., H, W)``."""
    height, width = depth.shape[-2:]
    rays = _pixel_grid(height, width, depth) @ torch.linalg.inv(intrinsics).transpose(-1, -2)[
        ..., None, :, :
    ]
    return rays * depth[..., None]


def transform_points(pose: Tensor, points: Tensor) -> Tensor:
    """Apply 4×4 transforms ``(..., 4, 4)`` to points ``(..., N..., 3)``.

    The point tensor may carry extra spatial dimensions after the pose's batch dims.
    """
    extra = points.dim() - pose.dim() + 1  # spatial dims between batch and xyz
    rot = pose[..., :3, :3]
    trans = pose[..., :3, 3]
    for _ in range(extra):
        rot = rot.unsqueeze(-3)
        trans = trans.unsqueeze(-2)
    return (points.unsqueeze(-2) @ rot.transpose(-1, -2)).squeeze(-2) + trans


def project(points: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``(..., 2)`` and z ``(...)`` of camera-frame points ``(..., N..., 3)``."""
    extra = points.dim() - intrinsics.dim() + 1
    k = intrinsics
    for _ in range(extra):
        k = k.unsqueeze(-3)
    z = points[..., 2]
    uvw = (points.unsqueeze(-2) @ k.transpose(-1, -2)).squeeze(-2)
    return uvw[..., :2] / z.unsqueeze(-1), z


# --------------------------------------------------------------------------- alignment
def fit_scale_shift(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, dims: tuple[int, ...] | None = None
) -> tuple[Tensor, Tensor]:
    """Least-squares ``(scale, shift)`` with ``scale·pred + shift ≈ target`` over ``mask``.

    Solved in closed form (2×2 normal equations) over ``dims`` (all dims by default), so the
    result keeps the other (batch) dims. A degenerate system gives scale 1 (or 0) and shift so
    that means match, rather than NaN.
    """
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    if dims is None:
        dims = tuple(range(pred.dim()))
    w = mask.to(pred.dtype)
    a00 = (w * pred * pred).sum(dims)
    a01 = (w * pred).sum(dims)
    a11 = w.sum(dims)
    b0 = (w * pred * target).sum(dims)
    b1 = (w * target).sum(dims)
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12 * (a00 * a11).abs().clamp_min(1e-30)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe_det, torch.zeros_like(det))
    shift = torch.where(
        ok, (-a01 * b0 + a00 * b1) / safe_det, b1 / a11.clamp_min(1.0)
    )
    return scale, shift


def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity ``(s, R, t)`` minimising ``Σ‖s·R·src_i + t − dst_i‖²`` (Umeyama, 1991).

    ``src`` and ``dst`` are ``(..., N, 3)``; returns ``s (...)``, ``R (..., 3, 3)``,
    ``t (..., 3)``. Hand-written because kornia has no batched similarity fit.
    """
    mu_s = src.mean(-2, keepdim=True)
    mu_d = dst.mean(-2, keepdim=True)
    xs = src - mu_s
    xd = dst - mu_d
    n = src.shape[-2]
    cov = xd.transpose(-1, -2) @ xs / n
    u, sigma, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    d = torch.ones_like(sigma)
    d[..., -1] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rot = u @ torch.diag_embed(d) @ vh
    if with_scale:
        var_s = (xs * xs).sum((-1, -2)) / n
        scale = (sigma * d).sum(-1) / var_s.clamp_min(1e-12)
    else:
        scale = torch.ones_like(sigma[..., 0])
    trans = mu_d.squeeze(-2) - scale[..., None] * (rot @ mu_s.squeeze(-2).unsqueeze(-1)).squeeze(-1)
    return scale, rot, trans
