"""Fast decoders of shard payloads for the training loader, pixel-identical to the PIL path.

Why not PIL: decoding a 720p frame with PIL is fast, but ``np.asarray(image)`` then copies
it through ``Image.tobytes`` (chunked encoder + join), which costs as much again as the
decode for JPEG and a third more for 16-bit PNG. torchvision's decoders (libjpeg-turbo with
the same integer IDCT and fancy chroma upsampling as PIL, libpng) write straight into a
tensor, so the same pixels arrive for about half the CPU time without a new dependency.

Anything these decoders are not sure to reproduce exactly (a PNG that is not 8/16-bit
grey or a payload that is not a JPEG) goes through the PIL path instead, so the result never
depends on which path ran.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, decode_png

__all__ = ["jpeg_rgb", "png_grey", "is_jpeg"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY = 0  # PNG colour type of greyscale without alpha


def is_jpeg(data: bytes) -> bool:
    """Whether a payload starts with the JPEG SOI marker."""
    return data[:2] == b"\xff\xd8"


def _as_tensor(data: bytes) -> torch.Tensor:
    # a writable copy (~0.2 MB): torch warns on read-only buffers and the decoders never write
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def jpeg_rgb(data: bytes) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` of a JPEG payload (a view of torchvision's interleaved output).

    Raises ``ValueError`` for a payload that is not a decodable JPEG.
    """
    if not is_jpeg(data):
        raise ValueError("not a JPEG payload")
    try:
        chw = decode_jpeg(_as_tensor(data), mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # torchvision reports libjpeg errors as RuntimeError
        raise ValueError(str(exc).splitlines()[0]) from exc
    return chw.permute(1, 2, 0)


def _png_kind(data: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's IHDR, ``None`` if the header is not PNG."""
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def png_grey(data: bytes) -> np.ndarray:
    """``(H, W)`` array of a greyscale PNG: uint16 for 16-bit, uint8 (0/255 for 1-bit masks)
    otherwise, exactly the values PIL gives up to that scaling of 1-bit images.

    Other PNG kinds (palette, colour, alpha, 2/4-bit) and non-PNG payloads are decoded by PIL
    (identical to the reference path: colour images come back ``(H, W, C)``). Raises
    ``ValueError`` for undecodable data.
    """
    kind = _png_kind(data)
    if kind is not None and kind[1] == _GREY and kind[0] in (1, 8, 16):
        try:
            out = decode_png(_as_tensor(data), ImageReadMode.UNCHANGED)[0]
        except RuntimeError as exc:
            raise ValueError(str(exc).splitlines()[0]) from exc
        return out.numpy()
    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(str(exc)) from exc
