"""The loader's hand-written PNG paths against independent readers and writers.

``encode_png16``/``encode_png_mask`` must write standard PNGs (PIL and libpng read them back
bit for bit); ``png16_rows`` must give libpng's values for None/Up-filtered 16-bit greyscale PNGs
from any writer and step aside (``None``) for everything else, so that the datamodule's
``decode_depth_bits`` still returns PIL's values or a ``ShardError`` naming the sample. The
float16 helpers of ``ClipStream.process`` are checked on every bit pattern, and the mirrored
crop / batch-of-one changes against flipping and stacking the unflipped results.

PNGs are built here by hand (``struct`` + stdlib ``zlib`` + ``crc32``, following the PNG
specification) so that the writers under test are not their own reference. Damaged payloads are
decoded in a forked process: torchvision 0.29.1's libpng wrapper dies with SIGSEGV on errors
inside the image data (those cases are strict xfails until the loader stops handing such PNGs
to it).
"""

from __future__ import annotations

import io
import itertools
import multiprocessing
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png

from gemdepth.data import codecs
from gemdepth.data.codecs import (
    _running_row_sums,
    encode_png16,
    encode_png_mask,
    png16_rows,
    png_mask,
)
from gemdepth.data.datamodule import (
    ClipStream,
    VideoDataModule,
    _fast_mask,
    _finite_non_negative,
    _float16_bits_to_float32,
)
from gemdepth.data.shards import ShardError, decode_depth_bits, iter_raw_samples
from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus
from gemdepth.data.transforms import crop_nearest, flip_intrinsics, plan_crop

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WHERE = ("shards/s-000.tar", "scene__7", "depth.0003.png")
# "shard <url>, sample <key>, field '<member>'": where a damaged payload is, in the error
_WHERE_RE = r"shard shards/s-000\.tar, sample scene__7, field 'depth\.0003\.png'"


# ---------------------------------------------------------------- independent PNG tooling
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, body)`` of every chunk, checking each CRC (the specification's layout)."""
    assert data[:8] == _SIGNATURE
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    assert out[0][0] == b"IHDR" and out[-1] == (b"IEND", b"")
    return out


def _ihdr(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    """``(width, height, bit depth, colour type, compression, filter method, interlace)``."""
    return struct.unpack(">IIBBBBB", _chunks(data)[0][1])


def _scanlines(data: bytes) -> np.ndarray:
    """Filtered scanlines ``(H, 1 + stride)`` of a non-interlaced PNG (IDAT inflated with the
    stdlib's zlib): column 0 holds each row's filter type."""
    w, h, depth, colour, _, _, interlace = _ihdr(data)
    assert interlace == 0 and colour == 0
    raw = zlib.decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT"))
    return np.frombuffer(raw, np.uint8).reshape(h, 1 + (w * depth + 7) // 8)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (x.astype(np.int16) for x in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter(raw: np.ndarray, kinds: list[int], bpp: int) -> np.ndarray:
    """PNG scanlines of image bytes ``raw`` (uint8 ``(H, stride)``), row ``r`` filtered with
    type ``kinds[r]`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth; PNG spec section 9): every
    filter reads the unfiltered bytes, so each row is one vectorised expression."""
    raw16 = raw.astype(np.int16)
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    for r, kind in enumerate(kinds):
        x = raw16[r]
        up = raw16[r - 1] if r else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int16), x[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int16), up[:-bpp]])
        pred = {0: 0, 1: left, 2: up, 3: (left + up) // 2, 4: _paeth(left, up, up_left)}[kind]
        out[r, 0] = kind
        out[r, 1:] = (x - pred) % 256
    return out


def _png(width: int, height: int, idat: bytes, bit_depth: int = 16, interlace: int = 0,
         split: int = 1, extra: bytes = b"") -> bytes:
    """A greyscale PNG around the zlib stream ``idat``, cut into ``split`` IDAT chunks, with
    ancillary chunks ``extra`` before them."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, interlace)
    cuts = np.linspace(0, len(idat), split + 1).astype(int)
    parts = b"".join(_chunk(b"IDAT", idat[a:b]) for a, b in itertools.pairwise(cuts))
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + extra + parts + _chunk(b"IEND", b"")


def _big_endian_bytes(bits: np.ndarray) -> np.ndarray:
    """``(H, 2W)`` bytes of a 16-bit greyscale image, most significant byte first (PNG)."""
    return bits.astype(">u2").view(np.uint8).reshape(bits.shape[0], -1)


def _png16(bits: np.ndarray, kinds: list[int], **kw) -> bytes:
    return _png(bits.shape[1], bits.shape[0],
                zlib.compress(_filter(_big_endian_bytes(bits), kinds, 2).tobytes()), **kw)


def _pil(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img)
    return arr if arr.dtype == bool else arr.astype(np.uint16)


def _libpng(data: bytes) -> np.ndarray:
    return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                      ImageReadMode.UNCHANGED)[0].numpy()


def _random_bits(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 16, shape, dtype=np.uint16)


def _smooth_bits(shape: tuple[int, int]) -> np.ndarray:
    """float16 patterns of a smooth positive depth map (where Pillow picks Paeth rows)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    depth = 5 + 3 * np.sin(xx / 6.0) * np.cos(yy / 4.0)
    return depth.astype(np.float16).view(np.uint16)


# ---------------------------------------------------------------- 1. encode_png16
@pytest.mark.parametrize("shape", [(1, 1), (1, 53), (41, 1), (37, 29), (5, 4096)])
def test_encode_png16_is_a_standard_png_every_reader_decodes(shape) -> None:
    bits = _random_bits(shape, seed=shape[0] * 7919 + shape[1])
    bits.flat[:3] = [0, 0xFFFF, 0x7C00][:bits.size]  # the extremes and +inf's pattern
    for level in (1, 6, 9):
        data = encode_png16(bits, level=level)
        assert _ihdr(data) == (shape[1], shape[0], 16, 0, 0, 0, 0)  # 16-bit grey, no interlace
        rows = _scanlines(data)
        assert (rows[:, 0] == 2).all()  # every row "Up"
        np.testing.assert_array_equal(_pil(data), bits)
        np.testing.assert_array_equal(_libpng(data), bits)
        fast = png16_rows(data)
        assert fast is not None and fast.dtype == np.dtype(">u2") and fast.shape == shape
        np.testing.assert_array_equal(fast.astype(np.uint16), bits)


# ---------------------------------------------------------------- 2. png16_rows vs other writers
@pytest.mark.parametrize("first", [0, 2])
def test_png16_rows_decodes_mixed_none_and_up_rows_of_other_writers(first) -> None:
    rng = np.random.default_rng(first)
    for shape in [(1, 3), (2, 1), (13, 17), (40, 9)]:
        mixed = [first] + rng.choice([0, 2], shape[0] - 1).tolist()
        for bits, kinds in itertools.product(
                (_random_bits(shape, int(rng.integers(1 << 30))), _smooth_bits(shape)),
                (mixed, [first] + [2] * (shape[0] - 1), [0] * shape[0])):
            # IDAT cut into 3 chunks after an ancillary chunk: both legal, both skipped
            data = _png16(bits, kinds, split=3, extra=_chunk(b"tEXt", b"Software\0hand"))
            want = _pil(data)
            np.testing.assert_array_equal(want, bits)  # the hand-made PNG is what PIL reads
            got = png16_rows(data)
            assert got is not None
            np.testing.assert_array_equal(got.astype(np.uint16), want)
            np.testing.assert_array_equal(decode_depth_bits(data, _WHERE).astype(np.uint16), want)


def _adam7(bits: np.ndarray) -> bytes:
    """An interlaced (Adam7) 16-bit greyscale PNG of ``bits``: the seven passes' sub-images,
    rows unfiltered, one after another (empty passes left out), per PNG spec section 8."""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
              (1, 0, 2, 1)]
    stream = b""
    for y0, x0, dy, dx in passes:
        sub = bits[y0::dy, x0::dx]
        if sub.size:
            stream += _filter(_big_endian_bytes(sub), [0] * sub.shape[0], 2).tobytes()
    return _png(bits.shape[1], bits.shape[0], zlib.compress(stream), interlace=1)


def test_png16_rows_leaves_other_filters_and_interlacing_to_libpng() -> None:
    """Sub/Average/Paeth rows, Adam7 interlacing or a Pillow-written PNG: ``png16_rows`` says
    ``None`` (unless every row happens to be None/Up) and ``decode_depth_bits`` gives PIL's
    values through libpng."""
    shape = (23, 31)
    bits = _random_bits(shape, 5)
    cases = {f"filter {kind} in row {row}": _png16(bits, [2] * row + [kind] + [2] * (22 - row))
             for kind in (1, 3, 4) for row in (0, 11, 22)}
    cases["all five filters"] = _png16(bits, [r % 5 for r in range(shape[0])])
    cases["adam7"] = _adam7(bits)
    for name, arr in (("pillow random", bits), ("pillow smooth", _smooth_bits(shape))):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")  # Pillow's own filter choice per row
        cases[name] = buf.getvalue()
    pillow_kinds = set(_scanlines(cases["pillow smooth"])[:, 0].tolist())
    assert pillow_kinds - {0, 2}, "Pillow chose only None/Up: the case tests nothing"
    for name, data in cases.items():
        want = _pil(data)
        written = _smooth_bits(shape) if name == "pillow smooth" else bits
        np.testing.assert_array_equal(want, written, err_msg=name)  # PIL reads what was written
        if name != "adam7" and set(_scanlines(data)[:, 0].tolist()) <= {0, 2}:
            np.testing.assert_array_equal(png16_rows(data).astype(np.uint16), want, err_msg=name)
        else:
            assert png16_rows(data) is None, name
        got = decode_depth_bits(data, _WHERE)
        assert got.dtype == np.uint16, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_png16_rows_refuses_other_bit_depths_and_the_loader_names_the_sample() -> None:
    grey8 = np.random.default_rng(3).integers(0, 256, (6, 10), dtype=np.uint8)
    data = _png(10, 6, zlib.compress(_filter(grey8, [2] * 6, 1).tobytes()), bit_depth=8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), grey8)  # valid
    assert png16_rows(data) is None
    assert png16_rows(encode_png_mask(grey8 > 100)) is None  # 1-bit
    with pytest.raises(ShardError, match=_WHERE_RE + r": depth PNG is 8-bit greyscale"):
        decode_depth_bits(data, _WHERE)


def _damaged(name: str) -> tuple[bytes, np.ndarray]:
    """A damaged depth PNG (and the bits it was made of)."""
    bits = _random_bits((16, 24), 9)
    good = _png16(bits, [2] * 16)
    stream = zlib.compress(_filter(_big_endian_bytes(bits), [2] * 16, 2).tobytes())
    short_rows = _filter(_big_endian_bytes(bits[:-1]), [2] * 15, 2).tobytes()
    cases = {
        "IDAT stream cut short": _png(24, 16, stream[: len(stream) // 2]),
        "IDAT garbage": _png(24, 16, np.random.default_rng(0).bytes(len(stream))),
        "IDAT one row short": _png(24, 16, zlib.compress(short_rows)),
        "file cut in IDAT": good[: len(good) // 2],
        "no IEND": good[:-12],
    }
    return cases[name], bits


def _in_child(fn, *args) -> tuple[int | None, object]:
    """``fn(*args)`` in a forked process: ``(exit code, what it returned or raised)``, so that a
    decoder crashing the interpreter (a signal: negative exit code) fails one test, not the run."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def run() -> None:
        try:
            send.send(("returned", fn(*args)))
        except Exception as exc:  # noqa: BLE001 - any error goes to the parent's assertions
            send.send(("raised", exc))

    proc = ctx.Process(target=run, daemon=True)
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode, recv.recv() if recv.poll() else None


@pytest.mark.parametrize("name", [
    "IDAT stream cut short", "IDAT garbage", "IDAT one row short", "file cut in IDAT"])
def test_damaged_png16_is_refused_with_the_sample_named(name) -> None:
    """Damaged image data raise (PIL would fill a missing row with zeros without a word; and
    torchvision's libpng crashed the process on the others, hence the child process); a file
    whose chunk list is cut is left to PIL, which raises too."""
    data, _ = _damaged(name)
    if name == "file cut in IDAT":
        assert png16_rows(data) is None
    else:
        with pytest.raises(ValueError, match="damaged PNG"):
            png16_rows(data)
    code, result = _in_child(decode_depth_bits, data, _WHERE)
    assert code == 0, f"{name}: the decoding process died (exit code {code})"
    kind, value = result
    assert kind == "raised" and isinstance(value, ShardError), (name, result)
    assert re.match(_WHERE_RE + r": undecodable image", str(value)), str(value)
    assert (value.shard, value.key, value.field) == _WHERE


def test_png16_without_iend_is_left_to_libpng_which_reads_it() -> None:
    """All image data there, only IEND missing: ``png16_rows`` steps aside; libpng (and PIL)
    read the pixels, so the loader keeps the frame."""
    data, bits = _damaged("no IEND")
    assert png16_rows(data) is None
    np.testing.assert_array_equal(_pil(data), bits)
    np.testing.assert_array_equal(decode_depth_bits(data, _WHERE), bits)


@pytest.mark.parametrize("field, payload", [
    ("sky.0001.png", "garbage"), ("sky.0001.png", "row short"), ("sky.0001.png", "cut")])
def test_damaged_mask_is_refused_with_the_sample_named(field, payload) -> None:
    mask = np.random.default_rng(1).random((12, 21)) > 0.5
    good = encode_png_mask(mask)
    packed = np.packbits(mask, axis=1)
    short = np.concatenate([np.zeros((11, 1), np.uint8), packed[:-1]], axis=1).tobytes()
    data = {"garbage": _png(21, 12, np.random.default_rng(2).bytes(40), bit_depth=1),
            "row short": _png(21, 12, zlib.compress(short), bit_depth=1),
            "cut": good[: len(good) // 2]}[payload]
    code, result = _in_child(_fast_mask, data, (_WHERE[0], _WHERE[1], field))
    assert code == 0, f"{payload}: the decoding process died (exit code {code})"
    kind, value = result
    assert kind == "raised" and isinstance(value, ShardError), result
    assert str(value).startswith(f"shard {_WHERE[0]}, sample {_WHERE[1]}, field '{field}': "
                                 "undecodable mask")


def test_png16_rows_refuses_a_stream_with_extra_rows() -> None:
    """More inflated bytes than the header's rows: not a PNG ``png16_rows`` may guess at."""
    bits = _random_bits((8, 5), 4)
    stream = _filter(_big_endian_bytes(bits), [2] * 8, 2).tobytes()
    data = _png(5, 7, zlib.compress(stream))  # the header says 7 rows, the stream has 8
    with pytest.raises(ValueError, match="damaged PNG: its image data hold 88 bytes, but 7 rows"):
        png16_rows(data)
    with pytest.raises(ValueError, match="damaged PNG"):
        png16_rows(_png(5, 8, zlib.compress(stream[:-1])))  # one byte short


# ---------------------------------------------------------------- 3. the blocked scan
@pytest.mark.parametrize("width", [1, 7, 64])
def test_running_row_sums_are_the_cumulative_sum_mod_256(width) -> None:
    rng = np.random.default_rng(width)
    for h in [*range(1, 41), 720]:
        body = rng.integers(0, 256, (h, width), dtype=np.uint8)
        before = body.copy()
        got = _running_row_sums(body)
        assert got.shape == body.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.cumsum(body.astype(np.int64), 0) % 256,
                                      err_msg=f"height {h}")
        np.testing.assert_array_equal(body, before)  # the input is left alone


# ---------------------------------------------------------------- 4. encode_png_mask
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (5, 8), (9, 13), (17, 64), (31, 100)])
def test_encode_png_mask_round_trips_through_pil_and_the_fast_decoder(shape, monkeypatch) -> None:
    rng = np.random.default_rng(shape[1])
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for mask in (rng.random(shape) > 0.5, yy < shape[0] * 0.4 + 2 * np.sin(xx / 3),
                 np.zeros(shape, bool), np.ones(shape, bool)):
        data = encode_png_mask(mask)
        assert _ihdr(data) == (shape[1], shape[0], 1, 0, 0, 0, 0)  # 1-bit grey, no interlace
        assert (_scanlines(data)[:, 0] == 0).all()  # rows unfiltered
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), mask)
        np.testing.assert_array_equal(_libpng(data).astype(bool), mask)
        with monkeypatch.context() as m:  # decoded without the libpng fallback
            m.setattr(codecs, "png_grey", lambda _: pytest.fail("png_mask fell back to libpng"))
            got = png_mask(data)
        assert got.shape == shape
        np.testing.assert_array_equal(got.astype(bool), mask)
        # an int mask (0/255, as some writers hold it) encodes the same
        assert encode_png_mask(mask.astype(np.uint8) * 255) == data


# ---------------------------------------------------------------- 5. float16 bit helpers
_SPECIAL = {0x0000: "+0", 0x7BFF: "max", 0x7C00: "+inf", 0x7E00: "NaN", 0x8000: "-0",
            0x8001: "-subnormal", 0xFC00: "-inf", 0x0001: "+subnormal", 0xFE00: "-NaN"}


def _reference_ok(bits: np.ndarray) -> bool:
    f = bits.view(np.float16).astype(np.float32)
    return bool((f >= 0).all() and np.isfinite(f).all())


def test_finite_non_negative_agrees_with_a_float_check() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 0x7C00, (3, 5, 7), dtype=np.uint16)  # all finite, >= 0
    arrays = [base, np.zeros((0, 4), np.uint16), rng.integers(0, 1 << 16, (4, 9), dtype=np.uint16)]
    for special in _SPECIAL:
        for where in (0, 57, base.size - 1):
            arr = base.copy()
            arr.flat[where] = special
            arrays.append(arr)
            both = arr.copy()
            both.flat[(where + 1) % base.size] = 0x8000  # -0.0 next to it
            arrays.append(both)
    arrays.append(np.full((2, 3), 0x8000, np.uint16))  # only -0.0: fine, as min() >= 0 says
    for arr in arrays:
        assert _finite_non_negative(arr) == _reference_ok(arr), arr
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = every.view(np.float16).astype(np.float32)
    want = (f >= 0) & np.isfinite(f)
    got = np.array([_finite_non_negative(every[i:i + 1]) for i in range(every.size)])
    np.testing.assert_array_equal(got, want)
    assert int(want.sum()) == 0x7C00 + 1  # 0x0000-0x7BFF and -0.0


def test_float16_bits_to_float32_is_numpys_conversion_bit_for_bit() -> None:
    """Every one of the 65536 patterns. NaNs: the same sign and payload, except that torch's
    conversion quiets signalling NaNs (sets float32's quiet bit 0x00400000) where numpy keeps
    them signalling (a NaN either way; the loader refuses NaN depth before converting)."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = _float16_bits_to_float32(every.reshape(4, 128, 128))
    assert got.dtype == np.float32 and got.shape == (4, 128, 128)
    got_bits = got.reshape(-1).view(np.uint32)
    want_bits = every.view(np.float16).astype(np.float32).view(np.uint32)
    nan = np.isnan(every.view(np.float16))
    np.testing.assert_array_equal(got_bits[~nan], want_bits[~nan])
    assert np.isnan(got.reshape(-1)[nan]).all()
    quiet = np.uint32(0x00400000)
    np.testing.assert_array_equal(got_bits[nan] | quiet, want_bits[nan] | quiet)


# ---------------------------------------------------------------- 6. mirrored crops
@pytest.mark.parametrize("src, out, short_side, jitter", [
    ((48, 64), (32, 32), 32, 0.0), ((48, 64), (24, 40), 30, 1.0), ((37, 53), (37, 53), 37, 0.0),
    ((96, 128), (20, 36), 20, 0.7), ((40, 30), (17, 11), 20, 0.3)])
def test_mirrored_crop_is_the_flipped_crop(src, out, short_side, jitter) -> None:
    rng = np.random.default_rng(len(src) + out[0])
    arr = rng.integers(0, 1 << 16, (2, 3, *src), dtype=np.uint16)
    box = plan_crop(src, out, short_side, rng, jitter)
    plain = crop_nearest(arr, box)
    mirrored = crop_nearest(arr, box, mirror=True)
    assert mirrored.shape == plain.shape == (2, 3, *out)
    np.testing.assert_array_equal(mirrored, plain[..., ::-1])
    np.testing.assert_array_equal(crop_nearest(arr[0, 0] > 1000, box, mirror=True),
                                  (plain[0, 0] > 1000)[:, ::-1])  # 2-D bool maps too


# ---------------------------------------------------------------- 7. the loader end to end
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("png_fast_paths") / "open"
    make_synthetic_corpus(root, 3, 6, 6, (48, 64), seed=11, clips_per_shard=1, progress=False,
                          config=SynthConfig(kind="open"))  # sky masks: the valid maps vary
    return root


def test_shard_writer_stores_up_filtered_depth_and_unfiltered_masks(corpus) -> None:
    sample = next(iter_raw_samples(min(corpus.glob("*.tar"))))
    depth = [k for k in sample if k.startswith("depth.")]
    masks = [k for k in sample if k.startswith("sky.")]
    assert depth and masks
    for key in depth:
        assert _ihdr(sample[key])[2:] == (16, 0, 0, 0, 0)
        assert (_scanlines(sample[key])[:, 0] == 2).all()
        np.testing.assert_array_equal(png16_rows(sample[key]).astype(np.uint16),
                                      _pil(sample[key]))
    for key in masks:
        assert _ihdr(sample[key])[2:] == (1, 0, 0, 0, 0)
        assert (_scanlines(sample[key])[:, 0] == 0).all()


def _loader_batches(corpus: Path, **kw) -> list[dict]:
    args = {"batch_size": 2, "clip_length": 4, "stride_range": (1, 2), "short_side": 32,
            "sizes": [(32, 32), (24, 40)], "num_workers": 0, "samples_per_epoch": 6, "seed": 4,
            "crop_jitter": 0.0, "sky": "invalid"}
    dm = VideoDataModule(train_sources={"syn": str(corpus)}, **{**args, **kw})
    return list(dm.train_dataloader())


@pytest.mark.parametrize("fast_decode", [True, False])
def test_flipped_batches_are_the_unflipped_ones_mirrored(corpus, fast_decode) -> None:
    """``hflip_prob=1`` against a probability too small to ever flip (it still draws the
    flip's random number, so both loaders draw the same clips, frames and sizes; ``0`` would
    skip that draw and shift every later clip)."""
    flipped = _loader_batches(corpus, hflip_prob=1.0, fast_decode=fast_decode)
    plain = _loader_batches(corpus, hflip_prob=1e-300, fast_decode=fast_decode)
    assert len(flipped) == len(plain) == 3
    for f, p in zip(flipped, plain):
        assert f["key"] == p["key"]
        for k in ("video", "depth", "valid"):
            assert f[k].shape == p[k].shape and f[k].dtype == p[k].dtype, k
            assert torch.equal(f[k], p[k].flip(-1)), k
        width = p["depth"].shape[-1]
        np.testing.assert_array_equal(f["intrinsics"].numpy(),
                                      flip_intrinsics(p["intrinsics"].numpy(), width))
        assert p["valid"].any() and (~p["valid"]).any()  # the sky masks took part
    # and the first clip is the one a loader that never flips (no draw at all) gives
    never = _loader_batches(corpus, hflip_prob=0.0, fast_decode=fast_decode, batch_size=1,
                            samples_per_epoch=1)[0]
    for k in ("video", "depth", "valid", "intrinsics"):
        assert torch.equal(never[k][0], plain[0][k][0]), k


@pytest.mark.parametrize("normalize", ["worker", "device"])
def test_batches_of_one_hold_the_stacked_example(corpus, monkeypatch, normalize) -> None:
    examples: list[dict] = []
    process = ClipStream.process

    def recording(self, *args, **kwargs):
        examples.append(process(self, *args, **kwargs))
        return examples[-1]

    monkeypatch.setattr(ClipStream, "process", recording)
    opts = {"batch_size": 1, "hflip_prob": 0.5, "normalize": normalize}
    fast = _loader_batches(corpus, **opts)
    recorded = [{k: v.clone() if torch.is_tensor(v) else v for k, v in e.items()}
                for e in examples]
    reference = _loader_batches(corpus, fast_decode=False, **opts)  # torch.stack collate
    assert len(fast) == len(reference) == len(recorded) == 6
    for batch, example, ref in zip(fast, recorded, reference):
        assert batch["key"] == [example["key"]] == ref["key"]
        for k in ("depth", "valid", "intrinsics", "extrinsics"):
            want = torch.stack([example[k]])
            assert batch[k].shape == (1, *example[k].shape) and batch[k].dtype == want.dtype, k
            assert torch.equal(batch[k], want) and torch.equal(batch[k], ref[k]), k
        if normalize == "device":
            assert batch["video"].dtype == torch.uint8
            assert torch.equal(batch["video"], torch.stack([example["video"]]))
        else:  # normalised from the example's uint8 frames, as the reference collate does
            assert batch["video"].shape == (1, *example["video"].shape)
            assert torch.equal(batch["video"], ref["video"])
    monkeypatch.undo()
    # through a worker process (the batch of one travels as a view to shared memory): the same
    workers = _loader_batches(corpus, num_workers=1, **opts)
    for batch, main in zip(workers, fast, strict=True):
        assert batch["key"] == main["key"]
        for k in ("video", "depth", "valid", "intrinsics", "extrinsics"):
            assert batch[k].dtype == main[k].dtype and torch.equal(batch[k], main[k]), k
