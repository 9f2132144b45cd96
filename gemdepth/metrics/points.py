"""Point clouds from depth maps: fixed-seed pixel subsampling and back-projection of chosen pixels.

Shared by :class:`~gemdepth.metrics.temporal.TCD` and :class:`~gemdepth.metrics.pose.F1Score`.
Only the chosen pixels are back-projected (``z · K⁻¹ [u, v, 1]``, the pixel-centre convention of
:func:`gemdepth.geometry.backproject`), so a subsampled 518×686 frame costs a few thousand
points, not 355 k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gemdepth.geometry import transform_points

__all__ = ["sample_pixels", "pixel_points"]


def _frame_keys(num_pixels: int, seed: int, frame: int) -> Tensor:
    """Uniform random keys of one frame; depends only on ``(seed, frame)``, not on batching."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + frame) % (2**63 - 1))
    return torch.rand(num_pixels, generator=gen)


def sample_pixels(
    mask: Tensor, num_points: int | None, *, seed: int = 0, first_frame: int = 0
) -> tuple[Tensor, Tensor]:
    """Flat pixel indices per frame and their validity.

    Args:
        mask: bool ``(F, H, W)`` candidate pixels.
        num_points: keep at most this many uniformly chosen candidates per frame (without
            replacement; the choice for frame ``first_frame + f`` depends only on ``seed`` and
            that index, so it is the same however sequences are split across ranks or
            chunks); ``None`` keeps every candidate.
        seed: subsampling seed.
        first_frame: sequence index of ``mask[0]``.

    Returns:
        ``idx`` int64 ``(F, N)`` flat pixel indices and ``sel`` bool ``(F, N)`` (``False`` =
        padding where a frame has fewer than ``N`` candidates).
    """
    frames = mask.shape[0]
    flat = mask.reshape(frames, -1)
    counts = flat.sum(1)
    if num_points is None:
        n = int(counts.max()) if frames else 0
        # stable sort puts candidates first, in raster order
        order = torch.sort((~flat).to(torch.uint8), dim=1, stable=True).indices[:, :n]
    else:
        n = min(int(num_points), flat.shape[1])
        keys = torch.stack([_frame_keys(flat.shape[1], seed, first_frame + f) for f in range(frames)])
        keys = keys.to(flat.device).masked_fill(~flat, 2.0)
        order = torch.topk(keys, n, dim=1, largest=False, sorted=False).indices
    sel = torch.arange(n, device=flat.device)[None, :] < counts.clamp_max(n)[:, None]
    if num_points is not None:
        sel = torch.gather(flat, 1, order)  # topk order is arbitrary: read validity back
    return order, sel


def pixel_points(depth: Tensor, idx: Tensor, intrinsics: Tensor, pose: Tensor | None = None) -> Tensor:
    """float64 ``(F, N, 3)`` points of pixels ``idx`` ``(F, N)`` of ``depth`` ``(F, H, W)``.

    Camera-frame points ``z · K⁻¹ [u, v, 1]`` with ``intrinsics`` ``(F, 3, 3)``, moved by
    ``pose`` ``(F, 4, 4)`` (camera → target frame) when given.
    """
    width = depth.shape[-1]
    z = torch.gather(depth.reshape(depth.shape[0], -1), 1, idx).double()
    u = (idx % width).double()
    v = torch.div(idx, width, rounding_mode="floor").double()
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    rays = pix @ torch.linalg.inv(intrinsics.double()).transpose(-1, -2)
    pts = rays * z[..., None]
    if pose is not None:
        pts = transform_points(pose.double(), pts)
    return pts
