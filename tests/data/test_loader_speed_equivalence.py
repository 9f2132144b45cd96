"""The fast loader path against the reference one, DCT-scaled decoding's geometry, and the
split of a corpus over ranks and DataLoader worker processes (each clip exactly once)."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemdepth.data.codecs import jpeg_rgb, png_grey
from gemdepth.data.datamodule import VideoDataModule, normalize_video
from gemdepth.data.shards import iter_raw_samples
from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus
from gemdepth.data.transforms import crop_intrinsics, decode_crop_rgb, plan_crop


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loader")
    # sky masks and poses; 96x128 frames, so 48/64-pixel crops resize (and DCT-scale at 1/2)
    make_synthetic_corpus(root / "open", 2, 6, 6, (96, 128), seed=3, clips_per_shard=1,
                          progress=False, config=SynthConfig(kind="open"))
    make_synthetic_corpus(root / "eight", 8, 4, 4, (32, 48), seed=5, clips_per_shard=1,
                          progress=False)  # 8 shards: split by shard over 2 x 2 readers
    make_synthetic_corpus(root / "two", 8, 4, 4, (32, 48), seed=6, clips_per_shard=4,
                          progress=False)  # 2 shards: the key-hash fallback
    return {p.name: p for p in root.iterdir()}


def _batches(path: Path, **kw) -> list[dict]:
    args = dict(batch_size=2, clip_length=4, stride_range=(1, 2), short_side=64,
                sizes=[(64, 64), (48, 64)], num_workers=0, samples_per_epoch=8, seed=0,
                hflip_prob=0.5, sky="invalid")
    dm = VideoDataModule(train_sources={"syn": str(path)}, **{**args, **kw})
    return list(dm.train_dataloader())


@pytest.mark.parametrize("short_side, sizes", [(64, [(64, 64), (48, 64)]),  # scale 2/3
                                               (40, [(40, 40)])])  # 96 -> 40: JPEG draft 1/2
def test_fast_path_gives_the_reference_batches(corpora, short_side, sizes) -> None:
    ref = _batches(corpora["open"], fast_decode=False, short_side=short_side, sizes=sizes)
    fast = _batches(corpora["open"], short_side=short_side, sizes=sizes)
    uint8 = _batches(corpora["open"], normalize="device", short_side=short_side, sizes=sizes,
                     decode_threads=2)  # frames decoded on 2 threads: the same clips
    assert len(ref) == len(fast) == len(uint8) == 4
    for r, f, u in zip(ref, fast, uint8):
        assert r.keys() == f.keys() == u.keys()
        assert f["key"] == r["key"] == u["key"]
        for k in ("depth", "valid", "intrinsics", "extrinsics", "has_pose", "is_disparity"):
            assert f[k].dtype == r[k].dtype and torch.equal(f[k], r[k]), k
            assert u[k].dtype == r[k].dtype and torch.equal(u[k], r[k]), k
        assert f["video"].dtype == torch.float32 and f["video"].shape == r["video"].shape
        assert torch.equal(f["video"], r["video"])  # the same decoder pixels, the same affine
        assert u["video"].dtype == torch.uint8 and u["video"].shape == r["video"].shape
        torch.testing.assert_close(normalize_video(u["video"]), r["video"], rtol=0, atol=1e-6)
        assert r["valid"].any() and (~r["valid"]).any()  # the sky masks took part


def test_device_normalisation_hook_only_touches_uint8_video(corpora) -> None:
    dm = VideoDataModule(train_sources={"syn": str(corpora["open"])}, normalize="device",
                         clip_length=4, short_side=64, sizes=[(64, 64)], num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    video = batch["video"].clone()
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["video"].dtype == torch.float32
    assert torch.equal(out["video"], normalize_video(video))
    again = dm.on_after_batch_transfer(out, 0)  # already float: left alone
    assert again["video"] is out["video"]
    with pytest.raises(ValueError, match="normalize must be one of"):
        VideoDataModule(train_sources={"syn": str(corpora["open"])}, normalize="gpu")


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def test_codecs_give_the_pil_values() -> None:
    rng = np.random.default_rng(0)
    depth = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    mask = rng.random((20, 30)) > 0.5
    for data in (_png(depth), _png(grey), _png(mask)):
        want = np.asarray(Image.open(io.BytesIO(data)))
        got = png_grey(data)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.astype(bool) if want.dtype == bool else got,
                                      want.astype(got.dtype) if want.dtype != bool else want)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)  # not grey: PIL's (H, W, 3)
    np.testing.assert_array_equal(png_grey(_png(rgb)), rgb)
    palette = Image.fromarray(grey).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    np.testing.assert_array_equal(png_grey(buf.getvalue()), np.asarray(palette))
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([127 + 100 * np.sin(xx / 7 + c) * np.cos(yy / 5) for c in range(3)], -1)
    for img in (Image.fromarray(smooth.astype(np.uint8)), Image.fromarray(grey)):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        got = jpeg_rgb(buf.getvalue()).numpy()
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want).max() <= 1  # same libjpeg-turbo IDCT: 0 here
    for bad in (b"\xff\xd8 not a jpeg", b"\x89PNG\r\n\x1a\n broken"):
        with pytest.raises(ValueError):
            (jpeg_rgb if bad[:2] == b"\xff\xd8" else png_grey)(bad)


def test_dct_scaled_decoding_keeps_intrinsics_consistent() -> None:
    """Bright blobs at the projections of known 3D points, JPEG at 384x512, cropped and
    resized 4x down: decoded at 1/4 scale by libjpeg (box aligned to 4 pixels), the blobs
    sit where the cropped intrinsics project the points (to 0.05 px), as in a full-scale
    decode; the mapping without the half-pixel terms would be 0.375 px off."""
    h, w = 384, 512
    k = np.array([[400.0, 0.0, 255.3], [0.0, 410.0, 190.7], [0.0, 0.0, 1.0]])
    gx, gy = np.meshgrid(np.linspace(-0.35, 0.35, 5), np.linspace(-0.3, 0.3, 4))
    z = 2.5 + 0.3 * np.sin(7 * gx.ravel() + 3 * gy.ravel())
    pts = np.stack([gx.ravel() * z, gy.ravel() * z, z], -1)  # separated blobs, varied depth
    uvw = pts @ k.T
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float64)
    for u, v in uvw[:, :2] / uvw[:, 2:]:  # pixel centres at integer coordinates
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 6.0**2))
    buf = io.BytesIO()
    Image.fromarray(np.repeat((255 * np.clip(img, 0, 1))[..., None], 3, -1).astype(np.uint8)
                    ).save(buf, format="JPEG", quality=95)
    box = plan_crop((h, w), (96, 96), 96, np.random.default_rng(2), jitter=1.0)
    assert box.reduce == 4 and box.top % 4 == box.left % 4 == 0 and box.left > 0

    def projected(kk: np.ndarray) -> np.ndarray:
        p = pts @ kk.T
        return p[:, :2] / p[:, 2:]

    def centroid_errors(video: torch.Tensor, expected: np.ndarray) -> np.ndarray:
        out = video[0, 0].double().numpy()
        oy, ox = np.mgrid[0:96, 0:96]
        errs = []
        for u, v in expected:
            if 5 <= u <= 90 and 5 <= v <= 90:
                wgt = out * ((np.abs(ox - u) <= 5) & (np.abs(oy - v) <= 5))
                errs.append(((wgt * ox).sum() / wgt.sum() - u, (wgt * oy).sum() / wgt.sum() - v))
        assert len(errs) >= 12
        return np.abs(np.array(errs))

    expected = projected(crop_intrinsics(k, box))
    naive = k.copy()  # scale only, no half-pixel terms: cx' = s·(cx − left)
    naive[0] *= box.scale_x
    naive[1] *= box.scale_y
    naive[0, 2] -= box.scale_x * box.left
    naive[1, 2] -= box.scale_y * box.top
    for fast in (True, False):
        for b in (box, replace(box, reduce=1)):  # DCT-scaled vs full-scale decode
            video = decode_crop_rgb([buf.getvalue()], b, fast=fast)
            assert centroid_errors(video, expected).max() < 0.05, (fast, b.reduce)
            assert centroid_errors(video, projected(naive)).min() > 0.3


def _keys_with_real_workers(dm: VideoDataModule, monkeypatch, world: int) -> Counter[str]:
    """Clip keys of one evaluation pass per simulated rank, each with real worker processes."""
    seen: Counter[str] = Counter()
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))  # what the loader reads (webdataset's
        monkeypatch.setenv("WORLD_SIZE", str(world))  # pytorch_worker_info), as under DDP
        seen.update(k for b in dm.test_dataloader() for k in b["key"])
    return seen


@pytest.mark.parametrize("name", ["eight", "two"])  # shard split / key-hash fallback
def test_every_clip_exactly_once_over_two_ranks_and_two_workers(corpora, monkeypatch,
                                                                  name) -> None:
    monkeypatch.delenv("WORKER", raising=False)
    monkeypatch.delenv("NUM_WORKERS", raising=False)
    all_keys = [raw["__key__"] for p in sorted(corpora[name].glob("*.tar"))
                for raw in iter_raw_samples(p)]
    assert len(all_keys) == len(set(all_keys)) == 8
    dm = VideoDataModule(test_sources={"syn": str(corpora[name])}, batch_size=1, clip_length=4,
                         short_side=32, sizes=[(32, 32)], num_workers=2)
    seen = _keys_with_real_workers(dm, monkeypatch, world=2)
    assert seen == Counter(all_keys)  # every clip, each exactly once
    if name == "eight":  # training: every (rank, worker) streams its own disjoint shards
        stream = dm._stream("test")
        shards = {}
        for rank, worker in itertools.product(range(2), range(2)):
            for var, value in (("RANK", rank), ("WORLD_SIZE", 2), ("WORKER", worker),
                               ("NUM_WORKERS", 2)):
                monkeypatch.setenv(var, str(value))
            shards[rank, worker], keep = stream._my_shards(stream.sources[0])
            assert keep is None
        for a, b in itertools.combinations(shards.values(), 2):
            assert not set(a) & set(b)
        assert sorted(itertools.chain(*shards.values())) == sorted(stream.sources[0].shards)
