"""Depth codecs of the shard writers (png16, raw16, zlib16): round trips, corpora that read
back the same clips, re-encoding a corpus, and the 1-bit mask PNG decoder."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemdepth.data import cli as data_cli
from gemdepth.data.codecs import (
    DEPTH_CODECS,
    DEPTH_EXTENSIONS,
    _unfilter_bytes,
    encode_depth_bits,
    png_grey,
    png_mask,
    raw_depth_bits,
)
from gemdepth.data.shards import (
    ShardError,
    decode_depth,
    decode_sample,
    iter_raw_samples,
    read_clips,
    read_index,
    recode_depth,
    write_corpus,
)
from gemdepth.data.synthetic import make_synthetic_corpus


def _bits(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """float16 bit patterns with the special values a depth map may hold (0, max, inf, NaN)."""
    bits = np.random.default_rng(seed).integers(0, 1 << 16, shape, dtype=np.uint16)
    bits.flat[:4] = np.array([0.0, 65504.0, np.inf, np.nan], np.float16).view(np.uint16)
    return bits


@pytest.mark.parametrize("codec", DEPTH_CODECS)
def test_every_depth_codec_round_trips_the_bits(codec) -> None:
    bits = _bits((37, 53))
    data = encode_depth_bits(bits, codec)
    if codec == "png16":
        got = png_grey(data)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(np.uint16),
                                      bits)  # PIL agrees: a plain 16-bit PNG
    else:
        got = raw_depth_bits(data, codec, bits.shape)
        assert not got.flags.writeable  # a view of the payload, no copy
        want = bits.astype("<u2").tobytes()
        assert (data if codec == "raw16" else zlib.decompress(data)) == want
    np.testing.assert_array_equal(got.astype(np.uint16), bits)
    assert DEPTH_EXTENSIONS[codec] in ("png", "f16", "f16.zz")


def test_raw_depth_payload_errors_name_the_problem() -> None:
    data = encode_depth_bits(_bits((4, 6)), "raw16")
    with pytest.raises(ValueError, match=r"holds 48 bytes, but a 5x6 frame needs 60"):
        raw_depth_bits(data, "raw16", (5, 6))
    with pytest.raises(ValueError, match="undecodable zlib16"):
        raw_depth_bits(b"not zlib", "zlib16", (4, 6))
    with pytest.raises(ValueError, match="unknown depth codec 'exr'"):
        encode_depth_bits(_bits((4, 6)), "exr")
    with pytest.raises(ShardError, match=r"shard s\.tar, sample k, field 'depth'.*re-create"):
        decode_depth(data, ("s.tar", "k", "depth"), "raw16", (5, 6))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("codecs")
    out = {}
    for codec in DEPTH_CODECS:  # the same renders (seeded), three depth encodings
        out[codec] = root / codec
        make_synthetic_corpus(out[codec], 2, 4, 4, (40, 56), seed=7, clips_per_shard=1,
                              progress=False, depth_codec=codec)
    return out


@pytest.mark.parametrize("codec", ["raw16", "zlib16"])
def test_corpora_of_every_codec_hold_the_same_clips(corpora, codec) -> None:
    index = read_index(corpora[codec])
    assert index["codecs"]["depth"] == f"float16-{codec}"
    assert index["source"]["depth_codec"] == codec
    assert "depth_codec" not in read_index(corpora["png16"])["source"]  # default: as before
    raw = next(iter_raw_samples(min(corpora[codec].glob("*.tar"))))
    assert f"depth.0000.{DEPTH_EXTENSIONS[codec]}" in raw and "depth.0000.png" not in raw
    assert json.loads(raw["meta.json"])["codecs"]["depth"] == f"float16-{codec}"
    ref, new = list(read_clips(corpora["png16"])), list(read_clips(corpora[codec]))
    assert len(ref) == len(new) == 2
    for a, b in zip(ref, new):
        assert a["__key__"] == b["__key__"]
        for field in ("rgb", "depth", "sky", "intrinsics", "extrinsics"):
            np.testing.assert_array_equal(a[field], b[field], err_msg=field)
    lazy = decode_sample(raw, frames=[1, 3], lazy=True)
    assert lazy["depth_codec"] == codec and len(lazy["depth"]) == 2


def test_recode_depth_keeps_every_pixel_and_checksums(corpora, tmp_path) -> None:
    recode_depth(corpora["png16"], tmp_path / "raw", "raw16")
    recode_depth(tmp_path / "raw", tmp_path / "back", "png16")
    index = read_index(tmp_path / "raw")
    assert index["complete"] and index["codecs"]["depth"] == "float16-raw16"
    for a, b, c in zip(read_clips(corpora["png16"]), read_clips(tmp_path / "raw"),
                       read_clips(tmp_path / "back")):  # read_clips verifies each sha256
        for field in ("rgb", "depth", "sky"):
            np.testing.assert_array_equal(a[field], b[field])
            np.testing.assert_array_equal(a[field], c[field])
    first = min((tmp_path / "raw").glob("*.tar"))
    src = min(corpora["png16"].glob("*.tar"))
    a, b = next(iter_raw_samples(src)), next(iter_raw_samples(first))
    assert a["rgb.0000.jpg"] == b["rgb.0000.jpg"] and a["sky.0000.png"] == b["sky.0000.png"]
    with pytest.raises(ValueError, match="another folder"):
        recode_depth(corpora["png16"], corpora["png16"], "raw16")


def test_resume_refuses_another_depth_codec(corpora, tmp_path) -> None:
    clips = [{k: v for k, v in c.items() if not k.startswith("__")}
             for c in read_clips(corpora["png16"])]
    write_corpus(clips[:1], tmp_path, "synthetic", clips_per_shard=1, progress=False)
    with pytest.raises(ValueError, match="--resume only finishes the same conversion.*--depth-codec"):
        write_corpus(clips, tmp_path, "synthetic", clips_per_shard=1, progress=False,
                     resume=True, depth_codec="raw16")


def test_unknown_depth_codec_in_a_sample_is_refused(corpora) -> None:
    raw = next(iter_raw_samples(min(corpora["raw16"].glob("*.tar"))))
    header = json.loads(raw["meta.json"])
    header["codecs"]["depth"] = "float16-jxl"
    raw["meta.json"] = json.dumps(header).encode()
    with pytest.raises(ShardError, match="'float16-jxl' is unknown to this reader.*update"):
        decode_sample(raw)


def test_cli_offers_the_codecs_the_writer_knows() -> None:
    assert data_cli.DEPTH_CODECS == DEPTH_CODECS
    args = data_cli._parser().parse_args(["synth", "--depth-codec", "raw16"])
    assert args.depth_codec == "raw16"
    assert "--depth-codec raw16" in data_cli._synth_command(args)
    assert data_cli._parser().parse_args(["synth"]).depth_codec == "png16"


def _reference_unfilter(rows: np.ndarray) -> np.ndarray:
    """PNG's None/Sub/Up reconstruction row by row, byte by byte (the specification)."""
    out = np.zeros((rows.shape[0], rows.shape[1] - 1), np.int64)
    for r, row in enumerate(rows):
        for x, v in enumerate(row[1:]):
            left = out[r, x - 1] if x else 0
            up = out[r - 1, x] if r else 0
            out[r, x] = (int(v) + {0: 0, 1: left, 2: up}[int(row[0])]) % 256
    return out.astype(np.uint8)


def test_unfiltering_matches_the_png_specification() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        rows = rng.integers(0, 256, (h, w + 1), dtype=np.uint8)
        rows[:, 0] = rng.integers(0, 3, h)
        np.testing.assert_array_equal(_unfilter_bytes(rows), _reference_unfilter(rows))
    rows[0, 0] = 4  # Paeth: left to libpng
    assert _unfilter_bytes(rows) is None


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 9), (96, 130)])
def test_mask_decoder_gives_the_pil_values(shape) -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for mask in (rng.random(shape) > 0.6, yy < shape[0] * 0.3 + 3 * np.sin(xx / 5)):
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG", optimize=False)  # as the shard writer
        got = png_mask(buf.getvalue())
        assert got.shape == shape
        np.testing.assert_array_equal(got.astype(bool), np.asarray(Image.open(buf)))
    grey = (rng.random(shape) * 255).astype(np.uint8)  # not 1-bit: the general decoder
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    np.testing.assert_array_equal(png_mask(buf.getvalue()), grey)
