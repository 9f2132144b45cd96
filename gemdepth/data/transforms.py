"""Clip geometry transforms: crop + resize (multi-resolution, paper A.2) and horizontal flip,
each keeping intrinsics and extrinsics consistent with the pixels.

Pixel convention (as :mod:`gemdepth.geometry`): pixel ``(u, v)`` has its centre at ``(u, v)``.
A crop is an integer box ``(top, left, height, width)`` of the source image, resized to the
output ``(h, w)`` with per-axis scales ``s_x = w / width``, ``s_y = h / height``; output pixel
``u'`` covers source edge coordinates ``[left + u'/s_x, left + (u'+1)/s_x]``, so
``u' = s_x·(u + ½ − left) − ½``: ``fx' = s_x·fx`` and ``cx' = s_x·(cx + ½ − left) − ½``.

RGB is decoded, cropped as uint8 and then resized (antialiased bilinear, all frames at once
with torch; JPEG draft decoding at 1/2, 1/4 or 1/8 scale first when the box shrinks by that
much, boxes aligned so the mapping stays exact). Depth and masks are sampled nearest-neighbour
with the same mapping so no depth is invented across edges.
"""

from __future__ import annotations

import io
import math
import threading
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gemdepth.data.codecs import is_jpeg, jpeg_rgb

__all__ = [
    "CropBox",
    "plan_crop",
    "crop_intrinsics",
    "decode_crop_rgb",
    "crop_nearest",
    "flip_intrinsics",
    "flip_extrinsics",
    "PAPER_SIZES",
]

#: The paper's multi-resolution crops (A.2), written there as W×H (the convention of the
#: multi-resolution recipe it cites): width 518, heights 518 … 168, i.e. landscape crops, here
#: as (H, W).
PAPER_SIZES: tuple[tuple[int, int], ...] = (
    (518, 518), (392, 518), (336, 518), (294, 518), (252, 518), (168, 518),
)
_REDUCTIONS = (8, 4, 2)  # JPEG draft scales libjpeg offers


@dataclass(frozen=True)
class CropBox:
    """Integer source box ``(top, left, height, width)`` of a ``src`` image, resized to ``out``.

    ``reduce`` (1, 2, 4 or 8) divides the box: a JPEG may be decoded at ``1/reduce`` scale.
    """

    src: tuple[int, int]
    out: tuple[int, int]
    top: int
    left: int
    height: int
    width: int
    reduce: int = 1

    @property
    def scale_y(self) -> float:
        return self.out[0] / self.height

    @property
    def scale_x(self) -> float:
        return self.out[1] / self.width


def plan_crop(src: tuple[int, int], out: tuple[int, int], short_side: int,
              rng: np.random.Generator | None = None, jitter: float = 0.0) -> CropBox:
    """Crop box for "resize the short side to ``short_side`` (more if ``out`` would not fit),
    then crop ``out``", at the centre shifted by up to ``jitter`` × half the free room.

    The box is rounded to whole source pixels, so the two axes' scales may differ by a
    fraction of a percent; :func:`crop_intrinsics` accounts for each exactly.
    """
    h, w = int(src[0]), int(src[1])
    oh, ow = int(out[0]), int(out[1])
    scale = max(short_side / min(h, w), oh / h, ow / w)
    bh = min(h, max(1, round(oh / scale)))
    bw = min(w, max(1, round(ow / scale)))
    reduce = next((r for r in _REDUCTIONS if bh >= r * oh and bw >= r * ow), 1)
    bh, bw = bh // reduce * reduce, bw // reduce * reduce
    jy = jx = 0.0
    if rng is not None and jitter > 0:
        jy, jx = (rng.uniform(-1.0, 1.0, size=2) * jitter).tolist()
    top = min(max(round((h - bh) / 2 * (1 + jy)), 0), h - bh) // reduce * reduce
    left = min(max(round((w - bw) / 2 * (1 + jx)), 0), w - bw) // reduce * reduce
    return CropBox(src=(h, w), out=(oh, ow), top=top, left=left, height=bh, width=bw,
                   reduce=reduce)


def crop_intrinsics(intrinsics: np.ndarray, box: CropBox) -> np.ndarray:
    """Intrinsics ``(..., 3, 3)`` of the cropped and resized image."""
    k = intrinsics.astype(np.float64, copy=True)
    k[..., 0, :] *= box.scale_x
    k[..., 1, :] *= box.scale_y
    k[..., 0, 2] += box.scale_x * (0.5 - box.left) - 0.5
    k[..., 1, 2] += box.scale_y * (0.5 - box.top) - 0.5
    return k.astype(intrinsics.dtype)


def _decode_box(data: bytes, box: CropBox) -> np.ndarray:
    """uint8 ``(height/r, width/r, 3)`` crop of one encoded frame, at 1/``box.reduce`` scale."""
    img = Image.open(io.BytesIO(data))
    if (img.size[1], img.size[0]) != box.src:
        raise ValueError(f"frame is {img.size[1]}x{img.size[0]} but the clip says "
                         f"{box.src[0]}x{box.src[1]}")
    r = box.reduce
    if r > 1 and img.format == "JPEG":
        img.draft("RGB", (math.ceil(box.src[1] / r), math.ceil(box.src[0] / r)))
    got = round(box.src[1] / img.size[0])  # the scale the decoder gave (1 or r)
    arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    t, l, bh, bw = box.top // got, box.left // got, box.height // got, box.width // got
    crop = arr[t:t + bh, l:l + bw]
    if got != r:  # no draft: average r×r blocks, which is what the draft would have done
        f = r // got
        crop = crop.reshape(bh // f, f, bw // f, f, 3).mean((1, 3)).round().astype(np.uint8)
    return crop


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...]) -> torch.Tensor:
    """This thread's reusable uint8 buffer for the crops before the resize: a fresh one per clip
    (~50 MB for 32 frames of 720x720) costs more in page faults than the copy into it."""
    n = math.prod(shape)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _SCRATCH.buf = torch.empty(n, dtype=torch.uint8)
    return buf[:n].view(shape)


def decode_crop_rgb(payloads: list[bytes], box: CropBox, fast: bool = False,
                    pool: Executor | None = None) -> torch.Tensor:
    """Decode frames, crop them as uint8 and resize all at once: uint8 ``(T, 3, h, w)``.

    ``fast``: full-scale JPEGs go through :func:`gemdepth.data.codecs.jpeg_rgb` (the same
    pixels as PIL, without PIL's copy into numpy) and are cropped straight into one
    preallocated stack; DCT-scaled (``box.reduce > 1``) and non-JPEG frames take the PIL path.
    ``pool``: decode the frames on these threads (the decoders release the GIL).
    """
    if not fast:
        crops = torch.from_numpy(np.stack([_decode_box(p, box) for p in payloads]))
    else:
        r = box.reduce
        shape = (len(payloads), box.height // r, box.width // r, 3)
        resized = shape[1:3] != tuple(box.out)  # else the crops are the output: fresh memory
        crops = _scratch(shape) if resized else torch.empty(shape, dtype=torch.uint8)

        def put(i: int) -> None:
            data = payloads[i]
            if r > 1 or not is_jpeg(data):
                crops.numpy()[i] = _decode_box(data, box)  # PIL's array is read-only
                return
            img = jpeg_rgb(data)
            if tuple(img.shape[:2]) != box.src:
                raise ValueError(f"frame is {img.shape[0]}x{img.shape[1]} but the clip says "
                                 f"{box.src[0]}x{box.src[1]}")
            crops[i] = img[box.top:box.top + box.height, box.left:box.left + box.width]

        list((pool.map if pool is not None else map)(put, range(len(payloads))))
    video = crops.permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last memory: fast uint8 path
    if tuple(video.shape[-2:]) != box.out:
        video = F.interpolate(video, size=box.out, mode="bilinear", align_corners=False,
                              antialias=True)
    return video


def _nearest_index(n_out: int, start: int, length: int, scale: float) -> np.ndarray:
    idx = start + np.floor((np.arange(n_out) + 0.5) / scale).astype(np.int64)
    return np.clip(idx, start, start + length - 1)


def crop_nearest(arr: np.ndarray, box: CropBox, mirror: bool = False) -> np.ndarray:
    """Nearest-neighbour crop-resize of maps ``(..., H, W)`` -> ``(..., h, w)``, mirrored
    left-right when ``mirror`` (the same pixels as flipping the result, without the copy)."""
    iy = _nearest_index(box.out[0], box.top, box.height, box.scale_y)
    ix = _nearest_index(box.out[1], box.left, box.width, box.scale_x)
    return np.take(np.take(arr, iy, axis=-2), ix[::-1] if mirror else ix, axis=-1)


def flip_intrinsics(intrinsics: np.ndarray, width: int) -> np.ndarray:
    """Intrinsics after mirroring the image left-right (``u -> W - 1 - u``)."""
    k = intrinsics.copy()
    k[..., 0, 2] = width - 1 - k[..., 0, 2]
    k[..., 0, 1] = -k[..., 0, 1]
    return k


def flip_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """World-to-camera poses of the mirrored scene: ``F·E·F`` with ``F = diag(-1, 1, 1, 1)``.

    Mirroring camera x (and the world with it) keeps each rotation proper and every
    back-projected point consistent across frames.
    """
    flip = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(extrinsics.dtype)
    return flip @ extrinsics @ flip
