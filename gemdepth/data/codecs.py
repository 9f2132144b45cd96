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
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, decode_png

__all__ = ["jpeg_rgb", "png_grey", "png_mask", "is_jpeg", "DEPTH_CODECS", "DEPTH_EXTENSIONS",
           "encode_depth_bits", "raw_depth_bits"]

#: Depth encodings a shard writer can choose (``--depth-codec``); all hold the same float16
#: bit patterns, so readers get identical values from any of them:
#: ``png16`` (default): 16-bit greyscale PNG, smallest with `data synth`'s settings, but
#: libpng's inflate + unfilter is the loader's slowest stage (~8 ms per 720p frame);
#: ``raw16``: uncompressed little-endian uint16 (H·W·2 bytes, ~8x a PNG): decoding is a
#: zero-copy view, and only the cropped pixels are ever read;
#: ``zlib16``: the same bytes deflated (zlib level 6, stdlib): about a PNG's size, ~3x faster
#: to decode than the PNG (no unfilter, no byte swap).
DEPTH_CODECS = ("png16", "raw16", "zlib16")
#: Member suffix (after ``depth.NNNN.``) of each depth codec inside a sample.
DEPTH_EXTENSIONS = {"png16": "png", "raw16": "f16", "zlib16": "f16.zz"}
_ZLIB_LEVEL = 6

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


def encode_depth_bits(bits: np.ndarray, codec: str = "png16") -> bytes:
    """A depth frame's payload: ``bits`` (uint16 float16 bit patterns, ``(H, W)``) in ``codec``."""
    if codec not in DEPTH_CODECS:
        raise ValueError(f"unknown depth codec {codec!r}; choose one of {DEPTH_CODECS}")
    if bits.dtype != np.uint16 or bits.ndim != 2:
        raise ValueError(f"depth bits must be a uint16 (H, W) array, got {bits.dtype} {bits.shape}")
    if codec == "png16":
        buf = io.BytesIO()
        Image.fromarray(bits).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    raw = np.ascontiguousarray(bits, dtype="<u2").tobytes()
    return raw if codec == "raw16" else zlib.compress(raw, _ZLIB_LEVEL)


def raw_depth_bits(data: bytes, codec: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` little-endian uint16 bits of a ``raw16``/``zlib16`` payload: a read-only,
    zero-copy view of the (inflated) bytes, so cropping it reads only the pixels kept.

    Raises ``ValueError`` for a payload of the wrong size or undecodable zlib data.
    """
    if codec == "zlib16":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise ValueError(f"undecodable zlib16 depth ({exc})") from exc
    elif codec != "raw16":
        raise ValueError(f"raw_depth_bits decodes raw16/zlib16, not {codec!r}")
    h, w = (int(v) for v in shape)
    if len(data) != 2 * h * w:
        raise ValueError(f"{codec} depth holds {len(data)} bytes, but a {h}x{w} frame needs "
                         f"{2 * h * w} (2 per pixel)")
    return np.frombuffer(data, dtype="<u2").reshape(h, w)


def _png_idat(data: bytes) -> bytes | None:
    """The concatenated IDAT payload of a PNG (``None`` if its chunk list is malformed)."""
    parts, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            return b"".join(parts)
        pos += 12 + length
    return None


def png_mask(data: bytes) -> np.ndarray:
    """``(H, W)`` uint8 of a mask PNG, non-zero where set (the values of :func:`png_grey`
    up to that scaling: 0/1 here for 1-bit masks).

    Why hand-written: libpng spends ~1 ms expanding a 720p 1-bit mask to bytes; the shard
    writer's 1-bit masks (non-interlaced, every row filter "none") are one ``zlib.decompress``
    of a few hundred bytes and a vectorised ``np.unpackbits`` (~20x less). Any other PNG, or a
    1-bit one with filtered rows, goes through :func:`png_grey`.
    """
    kind = _png_kind(data)
    if kind == (1, _GREY) and data[28] == 0:  # IHDR: 1-bit grey, not interlaced
        h, w = int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        idat = _png_idat(data)
        try:
            raw = None if idat is None else zlib.decompress(idat)
        except zlib.error:
            raw = None
        stride = 1 + (w + 7) // 8
        if raw is not None and len(raw) == h * stride:
            packed = _unfilter_bytes(np.frombuffer(raw, np.uint8).reshape(h, stride))
            if packed is not None:
                return np.unpackbits(packed, axis=1, count=w)
    return png_grey(data)


_NONE, _SUB, _UP = 0, 1, 2  # PNG filter types of one-byte-per-pixel rows handled here


def _unfilter_bytes(rows: np.ndarray) -> np.ndarray | None:
    """Reconstructed bytes of PNG scanlines ``(H, 1 + stride)`` (filter byte first) with one
    byte per pixel step, for rows filtered None/Sub/Up; ``None`` if any row uses Average or
    Paeth (sequential along the row: left to libpng).

    Vectorised and exact (uint8 arithmetic wraps mod 256 like PNG's): Sub is a running sum
    along the row; a run of Up rows is a running sum down the rows from the last row that is
    not Up (row -1 counts as zeros), i.e. ``C[r] - C[start - 1]`` with ``C`` the running sum.
    """
    kinds, data = rows[:, 0], rows[:, 1:]
    if (kinds > _UP).any():
        return None
    base = data.copy()
    sub = kinds == _SUB
    if sub.any():
        base[sub] = np.cumsum(data[sub], axis=1, dtype=np.uint8)
    up = kinds == _UP
    if not up.any():
        return base
    run = torch.cumsum(torch.from_numpy(base), 0, dtype=torch.uint8).numpy()  # ~2x numpy's
    start = np.maximum.accumulate(np.where(up, -1, np.arange(len(rows))))  # -1: none yet
    before = run[np.maximum(start - 1, 0)]
    before[start < 1] = 0  # the run starts at row 0 (prior row: zeros)
    return run - before
