"""Network input size, frame preprocessing and depth postprocessing of the official inference.

The official code resizes each frame with OpenCV (``INTER_CUBIC``) on the float32 ``[0, 1]``
image; ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` without
antialias computes the same function (max difference 4e-6), so no OpenCV dependency is needed
and the resize can run on the accelerator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PATCH",
    "effective_input_size",
    "network_size",
    "frames_per_chunk",
    "preprocess_frames",
    "upsample_depth",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14
MAX_ASPECT = 1.78  # the official guard: wider videos get a smaller input_size


def _multiple_of(x: float, multiple: int, min_val: int) -> int:
    """Nearest multiple (``np.round``, half to even as the official), ceil if below ``min_val``."""
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(math.ceil(x / multiple) * multiple)
    return y


def effective_input_size(height: int, width: int, input_size: int) -> int:
    """``input_size`` after the official aspect-ratio guard (ratio > 1.78 shrinks it)."""
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        input_size = int(input_size * 1.777 / ratio)
        input_size = round(input_size / PATCH) * PATCH
    if input_size < PATCH:
        raise ValueError(
            f"frame size {height}x{width} (aspect {ratio:.2f}) leaves an input size of {input_size} px "
            f"after the aspect-ratio guard; crop the video to a less extreme aspect ratio or raise input_size"
        )
    return input_size


def network_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """Network input ``(h, w)`` for a ``height × width`` frame, as the official ``Resize``.

    Keep the aspect ratio, scale so the image covers ``input_size × input_size`` ('lower_bound'),
    round each side to a multiple of 14 (ceil where rounding would fall below ``input_size``).
    The aspect-ratio guard of :func:`effective_input_size` is applied first.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size {height}x{width} is empty")
    size = effective_input_size(height, width, input_size)
    scale = max(size / height, size / width)
    return _multiple_of(scale * height, PATCH, size), _multiple_of(scale * width, PATCH, size)


def preprocess_frames(frames: Tensor | np.ndarray, size: tuple[int, int], max_bytes: int = 1 << 26) -> Tensor:
    """Network inputs ``(N, 3, h, w)`` float32 of uint8 RGB frames ``(N, H, W, 3)``.

    ``x/255`` in float32 → bicubic resize (no antialias, align_corners False) → ImageNet
    normalisation. Runs on the device ``frames`` is on (pass a CUDA tensor to resize there).
    Frames are converted in chunks of about ``max_bytes`` of float32 at source size, so 4K
    input does not need a float copy of the whole batch.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    n, height, width = frames.shape[:3]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    out = torch.empty((n, 3, *size), dtype=torch.float32, device=frames.device)
    chunk = max(1, max_bytes // (height * width * 3 * 4))
    for first in range(0, n, chunk):
        x = frames[first : first + chunk].permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
        out[first : first + chunk] = (x - mean) / std
    return out


def frames_per_chunk(height: int, width: int, max_bytes: int = 1 << 26) -> int:
    """How many float32 ``H × W`` maps fit in ``max_bytes`` (at least 1)."""
    return max(1, max_bytes // (height * width * 4))


def upsample_depth(depth: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize depth ``(T, h, w)`` to the frame size with bilinear, align_corners=True (official)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
