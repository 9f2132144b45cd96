"""Fast decoders of shard payloads for the training loader, pixel-identical to the PIL path.

JPEG: ``np.asarray(PIL image)`` copies the frame again through ``Image.tobytes`` (chunked
encoder + join), which costs as much as the decode; torchvision's ``decode_jpeg``
(libjpeg-turbo, the same integer IDCT and fancy chroma upsampling as PIL) writes straight into
a tensor. PNG: the shard writer's own PNGs (:func:`encode_png16`, :func:`encode_png_mask`: rows
filtered Up or None) are inflated by zlib-ng and unfiltered with vectorised numpy; any other PNG
goes to PIL (:func:`png_grey`), so the values never depend on which path ran.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

try:  # zlib-ng: the same deflate streams as the stdlib's zlib, inflated 2-4x faster
    from zlib_ng import zlib_ng as _deflate
except ImportError:  # pragma: no cover - a core dependency; the stdlib gives the same bytes
    _deflate = zlib

__all__ = ["jpeg_rgb", "png_grey", "png_mask", "png16_rows", "encode_png16", "is_jpeg",
           "DEPTH_CODECS", "DEPTH_EXTENSIONS", "encode_depth_bits", "encode_png_mask", "raw_depth_bits"]

#: Depth encodings a shard writer can choose (``--depth-codec``); all hold the same float16
#: bit patterns, so readers get identical values from any of them:
#: ``png16`` (default): 16-bit greyscale PNG, written with every row "Up"-filtered
#: (:func:`encode_png16`; the smallest of the three), which the loader undoes with a
#: vectorised running sum (:func:`png16_rows`, ~1.1 ms per 720p frame; PNGs from other
#: writers, e.g. Pillow's Paeth-filtered ones, go through PIL: ~7 ms);
#: ``raw16``: uncompressed little-endian uint16 (H·W·2 bytes, ~8x a PNG): decoding is a
#: zero-copy view, and only the cropped pixels are ever read;
#: ``zlib16``: the same bytes deflated (zlib level 6): about a PNG's size, no unfilter and no
#: byte swap to decode.
DEPTH_CODECS = ("png16", "raw16", "zlib16")
#: Member suffix (after ``depth.NNNN.``) of each depth codec inside a sample.
DEPTH_EXTENSIONS = {"png16": "png", "raw16": "f16", "zlib16": "f16.zz"}
_ZLIB_LEVEL = 6

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY = 0  # PNG colour type of greyscale without alpha
_NONE, _SUB, _UP = 0, 1, 2  # PNG row filter types undone here (Average and Paeth: libpng)


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
    """``(H, W)`` array of a greyscale PNG through PIL: uint16 for 16-bit, uint8 (0/255 for 1-bit
    masks) otherwise; other PNG kinds (palette, colour, alpha) come back as PIL gives them.

    The fallback of the fast paths (:func:`png16_rows`, :func:`png_mask`) for PNGs from other
    writers. Why PIL and not torchvision's ``decode_png``: on a damaged PNG (cut IDAT, bad CRC)
    torchvision 0.29's libpng error handler crashes the process (SIGSEGV), where PIL raises; a
    broken sample must be a counted skip, not a dead worker. Raises ``ValueError``.
    """
    try:
        img = Image.open(io.BytesIO(data))
        arr = np.asarray(img)
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(str(exc) or type(exc).__name__) from exc
    if arr.dtype == bool:  # 1-bit
        return arr.view(np.uint8) * np.uint8(255)
    if img.mode.startswith("I") and _png_kind(data) == (16, _GREY):
        return arr.astype(np.uint16, copy=False)  # PIL may widen 16-bit grey to int32 ("I")
    return arr


def encode_depth_bits(bits: np.ndarray, codec: str = "png16") -> bytes:
    """A depth frame's payload: ``bits`` (uint16 float16 bit patterns, ``(H, W)``) in ``codec``."""
    if codec not in DEPTH_CODECS:
        raise ValueError(f"unknown depth codec {codec!r}; choose one of {DEPTH_CODECS}")
    if bits.dtype != np.uint16 or bits.ndim != 2:
        raise ValueError(f"depth bits must be a uint16 (H, W) array, got {bits.dtype} {bits.shape}")
    if codec == "png16":
        return encode_png16(bits)
    raw = np.ascontiguousarray(bits, dtype="<u2").tobytes()
    return raw if codec == "raw16" else _deflate.compress(raw, _ZLIB_LEVEL)


def raw_depth_bits(data: bytes, codec: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` little-endian uint16 bits of a ``raw16``/``zlib16`` payload: a read-only,
    zero-copy view of the (inflated) bytes, so cropping it reads only the pixels kept.

    Raises ``ValueError`` for a payload of the wrong size or undecodable zlib data.
    """
    if codec == "zlib16":
        try:
            data = _deflate.decompress(data, bufsize=2 * int(shape[0]) * int(shape[1]))
        except _deflate.error as exc:
            raise ValueError(f"undecodable zlib16 depth ({exc})") from exc
    elif codec != "raw16":
        raise ValueError(f"raw_depth_bits decodes raw16/zlib16, not {codec!r}")
    h, w = (int(v) for v in shape)
    if len(data) != 2 * h * w:
        raise ValueError(f"{codec} depth holds {len(data)} bytes, but a {h}x{w} frame needs "
                         f"{2 * h * w} (2 per pixel)")
    return np.frombuffer(data, dtype="<u2").reshape(h, w)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(kind))
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(rows: np.ndarray, width: int, bit_depth: int, level: int, up: bool) -> bytes:
    """A greyscale PNG of packed scanlines ``rows`` (uint8 ``(H, stride)``), every row filtered
    "Up" (the byte difference to the row above; zeros above the first) or, ``up=False``, "None"."""
    h, stride = rows.shape
    filtered = np.empty((h, 1 + stride), np.uint8)
    filtered[:, 0] = _UP if up else _NONE
    if up:
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps mod 256, as PNG
    else:
        filtered[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, h, bit_depth, _GREY, 0, 0, 0)  # no interlace
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", _deflate.compress(filtered.tobytes(), level)),
                     _png_chunk(b"IEND", b"")))


def encode_png16(bits: np.ndarray, level: int = _ZLIB_LEVEL) -> bytes:
    """A standard 16-bit greyscale PNG of ``bits`` (uint16 ``(H, W)``), every row filtered "Up".

    Why hand-written: Pillow picks each row's filter itself (mostly Paeth on smooth depth),
    which readers must undo byte by byte (libpng: ~5 ms of a 720p frame's ~8 ms decode);
    Up rows are undone with a few vectorised adds (:func:`png16_rows`), and deflate
    smaller too (~0.6x Pillow's size on synthetic depth). Any PNG reader decodes the result.
    """
    h, w = bits.shape
    big = np.ascontiguousarray(bits, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
    return _png(big, w, 16, level, up=True)


def encode_png_mask(mask: np.ndarray, level: int = _ZLIB_LEVEL) -> bytes:
    """A standard 1-bit greyscale PNG of a boolean ``(H, W)`` mask (set = white), rows
    unfiltered (deflate finds repeated rows by itself; smaller than Pillow's output), so
    :func:`png_mask` decodes it without libpng (Pillow's own filter choice sends ~70 % of
    synthetic masks to libpng's ~1 ms path) and without a running sum."""
    mask = np.asarray(mask, dtype=bool)
    return _png(np.packbits(mask, axis=1), mask.shape[1], 1, level, up=False)


def _inflate_rows(data: bytes, h: int, stride: int) -> np.ndarray | None:
    """The ``(H, stride)`` filtered scanlines of a non-interlaced PNG (filter byte first);
    ``None`` if its chunk list is malformed (left to PIL, which reads PNGs without IEND).

    Raises ``ValueError`` when the image data do not inflate to exactly ``H`` rows: PIL would
    decode such a file without complaint, leaving the missing rows zero (silently wrong depth).
    """
    idat = _png_idat(data)
    if idat is None:
        return None
    try:
        raw = _deflate.decompress(idat, bufsize=h * stride)
    except _deflate.error as exc:
        raise ValueError(f"damaged PNG: its image data do not inflate ({exc})") from exc
    if len(raw) != h * stride:
        raise ValueError(f"damaged PNG: its image data hold {len(raw)} bytes, but {h} rows of "
                         f"{stride} need {h * stride}")
    return np.frombuffer(raw, np.uint8).reshape(h, stride)


def png16_rows(data: bytes) -> np.ndarray | None:
    """Big-endian uint16 ``(H, W)`` pixels of a non-interlaced 16-bit greyscale PNG whose rows
    are all filtered None or Up (what :func:`encode_png16` writes), exactly libpng's values;
    ``None`` for any other PNG (the caller then asks PIL). Raises ``ValueError`` when the image
    data are damaged (see :func:`_inflate_rows`), whichever their filters. Crop the result
    before converting it to native byte order.

    Why hand-written: libpng spends most of a 720p depth frame's decode undoing filters byte by
    byte; here the stream is inflated in one call (zlib-ng) and Up rows are undone by a blocked
    running sum (:func:`_running_row_sums`).
    """
    if _png_kind(data) != (16, _GREY) or data[28] != 0:
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if h == 0 or w == 0:
        return None
    rows = _inflate_rows(data, h, 1 + 2 * w)
    if rows is None:
        return None
    kinds = rows[:, 0]
    if ((kinds != _NONE) & (kinds != _UP)).any():
        return None
    body = rows[:, 1:]
    if (kinds[1:] == _UP).all():  # the first row's filter does not matter: zeros above it
        return _running_row_sums(body).view(">u2")
    out = np.empty((h, 2 * w), np.uint8)  # mixed None/Up rows (another writer): row by row
    up = (kinds == _UP).tolist()
    out[0] = body[0]
    for r in range(1, h):
        if up[r]:
            np.add(out[r - 1], body[r], out=out[r])
        else:
            out[r] = body[r]
    return out.view(">u2")


def _running_row_sums(body: np.ndarray) -> np.ndarray:
    """Byte-wise running sums down the rows of ``body`` (uint8 ``(H, S)``, mod 256): PNG's Up
    filter undone. Vectorised as a blocked scan: ~sqrt(H) row blocks, summed inside every block
    at once (one add per row offset), then each block gets the running total of those above
    (one add per block): ~2·sqrt(H) numpy calls instead of H (numpy's cumsum along axis 0
    is ~8x slower than either)."""
    h, width = body.shape
    size = max(1, math.isqrt(h))
    blocks = -(-h // size)
    out = np.zeros((blocks * size, width), np.uint8)
    out[:h] = body
    tiles = out.reshape(blocks, size, width)
    for j in range(1, size):
        np.add(tiles[:, j], tiles[:, j - 1], out=tiles[:, j])
    for k in range(1, blocks):
        np.add(tiles[k], tiles[k - 1, -1], out=tiles[k])
    return out[:h]


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
    1-bit one with Average/Paeth rows, goes through :func:`png_grey`. Raises ``ValueError``
    for damaged image data.
    """
    kind = _png_kind(data)
    if kind == (1, _GREY) and data[28] == 0:  # IHDR: 1-bit grey, not interlaced
        h, w = int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        rows = _inflate_rows(data, h, 1 + (w + 7) // 8) if h and w else None  # raises if damaged
        packed = None if rows is None else _unfilter_bytes(rows)
        if packed is not None:
            return np.unpackbits(packed, axis=1, count=w)
    return png_grey(data)


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
