"""Small images for TensorBoard: colourised depth strips and a top-down camera-path plot.

Hand-written on purpose: matplotlib is not a runtime dependency, and these need only a
colour ramp (interpolated anchor colours) and a polyline (Pillow's ``ImageDraw``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from gemdepth.geometry import camera_centres, fit_scale_shift, relative_to_first, umeyama

__all__ = ["colorize", "denormalize", "depth_strip", "camera_path_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# anchor colours of a perceptually ordered ramp (dark blue → purple → orange → yellow)
_RAMP = torch.tensor(
    [
        [13, 8, 135],
        [84, 2, 163],
        [139, 10, 165],
        [185, 50, 137],
        [219, 92, 104],
        [244, 136, 73],
        [254, 188, 43],
        [240, 249, 33],
    ],
    dtype=torch.float32,
) / 255.0


def colorize(values: Tensor, mask: Tensor | None = None, lo: float | None = None, hi: float | None = None) -> Tensor:
    """Map ``(..., H, W)`` values to RGB ``(..., 3, H, W)`` in [0, 1]; masked-out pixels black.

    The range defaults to the 2nd–98th percentile of the valid values (one range for the whole
    input, so frames of a strip share a scale).
    """
    values = values.detach().float().cpu()
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    valid = values[mask & torch.isfinite(values)]
    if valid.numel() == 0:
        return torch.zeros(*values.shape[:-2], 3, *values.shape[-2:])
    if lo is None or hi is None:
        qs = torch.quantile(valid[:: max(1, valid.numel() // 100_000)], torch.tensor([0.02, 0.98]))
        lo = float(qs[0]) if lo is None else lo
        hi = float(qs[1]) if hi is None else hi
    x = ((values - lo) / max(hi - lo, 1e-12)).clamp(0, 1).nan_to_num(0.0)
    pos = x * (len(_RAMP) - 1)
    i0 = pos.floor().long().clamp(0, len(_RAMP) - 2)
    frac = (pos - i0).unsqueeze(-1)
    rgb = _RAMP[i0] * (1 - frac) + _RAMP[i0 + 1] * frac  # (..., H, W, 3)
    rgb = rgb * mask.unsqueeze(-1)
    return rgb.movedim(-1, -3)


def denormalize(video: Tensor) -> Tensor:
    """ImageNet-normalised RGB ``(..., 3, H, W)`` → [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=video.device).view(3, 1, 1)
    return (video.float() * std + mean).clamp(0, 1)


def depth_strip(
    video: Tensor, gt_disp: Tensor, valid: Tensor, pred: Tensor, max_frames: int = 8
) -> Tensor:
    """A ``(3, 3·H, n·W)`` image: rows RGB, ground-truth disparity, prediction; ``n`` frames.

    The prediction is aligned to the ground truth by a least-squares scale and shift over the
    clip so both rows share one colour scale.
    """
    t = video.shape[0]
    idx = torch.linspace(0, t - 1, min(t, max_frames)).round().long()
    rgb = denormalize(video[idx]).cpu()
    gt = gt_disp[idx].float().cpu()
    m = valid[idx].cpu().bool()
    p = pred[idx].detach().float().cpu()
    if m.any():
        scale, shift = fit_scale_shift(p, gt, m)
        p = scale * p + shift
        qs = torch.quantile(gt[m][:: max(1, int(m.sum()) // 100_000)], torch.tensor([0.02, 0.98]))
        lo, hi = float(qs[0]), float(qs[1])
    else:
        lo, hi = None, None
    rows = [rgb, colorize(gt, m, lo, hi), colorize(p, None, lo, hi)]
    return torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)


def camera_path_image(gt_extrinsics: Tensor, pred_extrinsics: Tensor | None, size: int = 192) -> Tensor:
    """Top-down (x–z) plot ``(3, size, size)`` of ground-truth (green) and predicted (red) camera centres.

    Both trajectories are taken relative to frame 0; the prediction is similarity-aligned
    (Umeyama) to the ground truth, since GEM's translation scale is normalised.
    """
    gt = camera_centres(relative_to_first(gt_extrinsics.double().cpu()))
    paths = [("gt", gt, (40, 170, 60))]
    if pred_extrinsics is not None:
        pr = camera_centres(relative_to_first(pred_extrinsics.detach().double().cpu()))
        if gt.shape[0] >= 3 and float((gt - gt.mean(0)).abs().max()) > 1e-9:
            s, r, tr = umeyama(pr, gt, with_scale=True)
            pr = s * pr @ r.T + tr
        paths.append(("pred", pr, (220, 50, 50)))
    pts = torch.cat([p[:, [0, 2]] for _, p, _ in paths]).numpy()
    lo, hi = pts.min(0), pts.max(0)
    span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
    centre = (lo + hi) / 2
    margin = 16
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([margin // 2, margin // 2, size - margin // 2, size - margin // 2], outline=(200, 200, 200))

    def to_px(xz: np.ndarray) -> list[tuple[float, float]]:
        u = (xz[:, 0] - centre[0]) / span * (size - 2 * margin) + size / 2
        v = size / 2 - (xz[:, 1] - centre[1]) / span * (size - 2 * margin)  # z forward = up
        return list(zip(u.tolist(), v.tolist()))

    for i, (label, path, colour) in enumerate(paths):
        px = to_px(path[:, [0, 2]].numpy())
        if len(px) > 1:
            draw.line(px, fill=colour, width=2)
        x0, y0 = px[0]
        draw.ellipse([x0 - 3, y0 - 3, x0 + 3, y0 + 3], outline=colour, width=2)
        draw.text((4, 2 + 10 * i), label, fill=colour)
    arr = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return arr
