"""VideoDataModule: batch contract, multi-resolution, geometry after crop/flip, DDP split,
sky handling, bad samples."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gemdepth.data import ShardError, write_corpus
from gemdepth.data.datamodule import IMAGENET_MEAN, IMAGENET_STD, VideoDataModule
from gemdepth.data.shards import _encode_clip, iter_raw_samples
from gemdepth.data.synthetic import SynthConfig, iter_synthetic_clips, make_synthetic_corpus
from gemdepth.data.transforms import flip_extrinsics, flip_intrinsics
from gemdepth.geometry import backproject, invert_rigid, project, transform_points
from shard_helpers import register_raw_shard

SMALL = [(32, 32), (32, 48)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    make_synthetic_corpus(root / "posed", 4, 8, 8, (48, 64), seed=0, clips_per_shard=1,
                          progress=False)
    make_synthetic_corpus(root / "two_shards", 4, 8, 8, (48, 64), seed=1, clips_per_shard=2,
                          progress=False)
    make_synthetic_corpus(root / "static_room", 1, 6, 6, (48, 64), seed=2, progress=False,
                          config=SynthConfig(kind="room", moving_fraction=0.0))
    make_synthetic_corpus(root / "open", 2, 4, 4, (48, 64), seed=3, progress=False,
                          config=SynthConfig(kind="open"))
    make_synthetic_corpus(root / "free", 2, 4, 4, (48, 64), seed=4, pose_free=True,
                          progress=False)
    return {p.name: p for p in root.iterdir()}


def _dm(sources, **kw) -> VideoDataModule:
    args = dict(batch_size=2, clip_length=4, stride_range=(1, 2), short_side=32, sizes=SMALL,
                num_workers=0, samples_per_epoch=8, seed=0)
    args.update(kw)
    if isinstance(sources, Path):
        sources = {"syn": {"path": str(sources)}}
    return VideoDataModule(train_sources=sources, **args)


def test_training_batch_contract(corpora) -> None:
    dm = _dm(corpora["posed"])
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 == len(dm.train_dataloader())
    b = batches[0]
    bsz, t, (h, w) = 2, 4, b["video"].shape[-2:]
    assert (h, w) in SMALL
    assert b["video"].shape == (bsz, t, 3, h, w) and b["video"].dtype == torch.float32
    assert b["depth"].shape == (bsz, t, h, w) and b["depth"].dtype == torch.float32
    assert b["valid"].shape == (bsz, t, h, w) and b["valid"].dtype == torch.bool
    assert b["intrinsics"].shape == (bsz, t, 3, 3) and b["extrinsics"].shape == (bsz, t, 4, 4)
    assert b["has_pose"].tolist() == [True, True] and b["is_disparity"].tolist() == [False, False]
    assert len(b["key"]) == 2 and all(k.startswith("synthetic__scene-") for k in b["key"])
    rgb = b["video"] * torch.from_numpy(IMAGENET_STD)[:, None, None] + torch.from_numpy(
        IMAGENET_MEAN)[:, None, None]
    assert rgb.min() >= -1e-4 and rgb.max() <= 1 + 1e-4 and rgb.std() > 0.05
    assert (b["depth"][b["valid"]] > 0).all() and (b["depth"] <= 400).all()


def test_batches_share_a_shape_and_all_shapes_appear(corpora) -> None:
    dm = _dm(corpora["posed"], batch_size=3, samples_per_epoch=3 * 12)
    loader = dm.train_dataloader()
    first = [(tuple(b["video"].shape[-2:]), b["key"]) for b in loader]
    assert {s for s, _ in first} == set(SMALL)
    again = [(tuple(b["video"].shape[-2:]), b["key"]) for b in _dm(
        corpora["posed"], batch_size=3, samples_per_epoch=36).train_dataloader()]
    assert again == first  # seeded
    second_epoch = [(tuple(b["video"].shape[-2:]), b["key"]) for b in loader]
    assert second_epoch != first  # the stream advances per epoch
    other = [(tuple(b["video"].shape[-2:]), b["key"]) for b in _dm(
        corpora["posed"], batch_size=3, samples_per_epoch=36, seed=1).train_dataloader()]
    assert other != first


def _reprojection(depth: torch.Tensor, intr: torch.Tensor, extr: torch.Tensor, i: int,
                  j: int) -> np.ndarray:
    """Median-ready relative z errors of frame i warped into frame j (inverse-depth sampling)."""
    d, k, e = depth.double(), intr.double(), extr.double()
    h, w = d.shape[-2:]
    uv, z = project(transform_points(e[j] @ invert_rigid(e[i]), backproject(d[i], k[i])), k[j])
    grid = torch.stack([uv[..., 0] / (w - 1) * 2 - 1, uv[..., 1] / (h - 1) * 2 - 1], -1)
    inv = torch.where(d[j] > 0, 1 / d[j].clamp_min(1e-9), torch.zeros_like(d[j]))
    dj = F.grid_sample(inv[None, None], grid[None], align_corners=True)[0, 0]
    dj = 1 / dj.clamp_min(1e-12)
    ok = (d[i] > 0) & (z > 0) & (grid.abs() < 0.98).all(-1)
    return ((z - dj).abs() / dj)[ok].numpy()


@pytest.mark.parametrize("short_side, size", [(48, (40, 48)), (48, (48, 32)), (72, (64, 64))])
def test_crop_resize_flip_keep_geometry_consistent(corpora, short_side, size) -> None:
    dm = _dm(corpora["static_room"], clip_length=6, short_side=short_side, sizes=[size],
             hflip_prob=1.0, crop_jitter=1.0)
    stream = dm._stream("train")
    raw = next(iter_raw_samples(next(iter(sorted(corpora["static_room"].glob("*.tar"))))))
    rng = np.random.default_rng(0)
    ex = stream.process(raw, stream.sources[0], size, rng)
    assert ex["depth"].shape == (6, *size)
    errs = _reprojection(ex["depth"], ex["intrinsics"], ex["extrinsics"], 0, 5)
    assert errs.size > 300
    tol = 2e-3 if short_side == 48 else 1e-2  # no resampling vs. nearest-neighbour upsampling
    good = np.median(errs)
    assert good < tol
    # the check is sharp: forgetting to flip the poses (or the principal point) breaks it
    unflipped = torch.from_numpy(flip_extrinsics(ex["extrinsics"].numpy()))
    assert np.median(_reprojection(ex["depth"], ex["intrinsics"], unflipped, 0, 5)) > 4 * good
    k_bad = flip_intrinsics(ex["intrinsics"].numpy(), size[1])
    assert np.median(_reprojection(ex["depth"], torch.from_numpy(k_bad), ex["extrinsics"], 0, 5)) \
        > 4 * good


def test_flip_maps_pixels_to_their_mirror() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform([-2, -2, 3], [2, 2, 8], size=(50, 3))
    k = np.array([[60.0, 0.5, 30.7], [0, 58.0, 21.2], [0, 0, 1]])
    e = np.eye(4)
    e[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * np.array([1, 1, 1])
    e[:3, :3] *= np.sign(np.linalg.det(e[:3, :3]))
    e[:3, 3] = [0.1, -0.2, 0.3]
    width = 64

    def pix(kk, ee, p):
        cam = p @ ee[:3, :3].T + ee[:3, 3]
        uvw = cam @ kk.T
        return uvw[:, :2] / uvw[:, 2:]

    uv = pix(k, e, pts)
    uv_flip = pix(flip_intrinsics(k, width), flip_extrinsics(e), pts * np.array([-1, 1, 1]))
    np.testing.assert_allclose(uv_flip[:, 0], width - 1 - uv[:, 0], atol=1e-9)
    np.testing.assert_allclose(uv_flip[:, 1], uv[:, 1], atol=1e-9)
    assert np.linalg.det(flip_extrinsics(e)[:3, :3]) == pytest.approx(1.0)


def _keys_by_worker(dm: VideoDataModule, split: str, monkeypatch, world=2, workers=2,
                    batches: int | None = None) -> dict[tuple[int, int], set[str]]:
    seen = {}
    for rank, worker in itertools.product(range(world), range(workers)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        stream = dm._stream(split)
        it = iter(stream)
        got = list(itertools.islice(it, batches)) if batches else list(it)
        seen[rank, worker] = {k for b in got for k in b["key"]}
    return seen


@pytest.mark.parametrize("name", ["posed", "two_shards"])  # shard split / key-hash fallback
def test_ddp_ranks_and_workers_see_disjoint_clips(corpora, monkeypatch, name) -> None:
    all_keys = {raw["__key__"] for p in sorted(corpora[name].glob("*.tar"))
                for raw in iter_raw_samples(p)}
    dm = VideoDataModule(test_sources={"syn": str(corpora[name])}, batch_size=1, clip_length=4,
                         short_side=32, sizes=SMALL, num_workers=0)
    seen = _keys_by_worker(dm, "test", monkeypatch)
    for a, b in itertools.combinations(seen.values(), 2):
        assert not a & b
    assert set().union(*seen.values()) == all_keys
    train = _keys_by_worker(_dm(corpora[name], batch_size=1, samples_per_epoch=16), "train",
                            monkeypatch, batches=4)
    for a, b in itertools.combinations(train.values(), 2):
        assert not a & b
    assert all(train.values())


def test_sky_far_and_invalid(corpora) -> None:
    path = str(corpora["open"])
    far = _dm({"o": {"path": path, "max_depth": 20.0}}, hflip_prob=0.0)
    inv = _dm({"o": {"path": path, "max_depth": 20.0, "sky": "invalid"}}, hflip_prob=0.0)
    b_far = next(iter(far.train_dataloader()))
    b_inv = next(iter(inv.train_dataloader()))
    assert b_far["key"] == b_inv["key"]
    sky = ~b_inv["valid"]
    assert sky.any() and b_far["valid"].all()
    assert (b_far["depth"][sky] == 20.0).all() and (b_far["depth"] <= 20.0).all()
    assert (b_inv["depth"][b_inv["valid"]] > 0).all()


def test_pose_free_and_disparity_corpora(corpora, tmp_path) -> None:
    b = next(iter(_dm(corpora["free"]).train_dataloader()))
    assert not b["has_pose"].any()
    assert torch.equal(b["extrinsics"], torch.eye(4).expand_as(b["extrinsics"]))
    clips = []
    for clip in iter_synthetic_clips(2, 4, 4, (48, 64), seed=5, pose_free=True):
        d = clip["depth"]
        clip["depth"] = np.where(d > 0, 1 / np.maximum(d, 1e-6), 0).astype(np.float32)
        clip["meta"].update(corpus="disp", depth_kind="relative-disparity")
        clips.append(clip)
    write_corpus(clips, tmp_path, "disp", progress=False)
    b = next(iter(_dm(tmp_path).train_dataloader()))
    assert b["is_disparity"].all() and b["valid"].all()


def _bad_shard(corpora, tmp_path: Path) -> str:
    """A source with good clips plus, in a second shard, three unusable ones."""
    good = tmp_path / "corpus"
    write_corpus(iter_synthetic_clips(2, 8, 8, (48, 64), seed=6), good, "synthetic",
                 progress=False)
    clips = list(iter_synthetic_clips(3, 8, 8, (48, 64), seed=7))
    missing = _encode_clip(clips[0], "synthetic__bad-missing__0", 95)
    del missing["depth.0003.png"]
    no_pose = dict(clips[1], extrinsics=None, meta={**clips[1]["meta"], "has_pose": False})
    short = {k: (v[:2] if isinstance(v, np.ndarray) else v) for k, v in clips[2].items()}
    short["meta"] = {**clips[2]["meta"], "frame_indices": [0, 1]}
    register_raw_shard(good / "bad.tar", [  # listed in the index, checksum and all
        missing, _encode_clip(no_pose, "synthetic__bad-nopose__0", 95),
        _encode_clip(short, "synthetic__bad-short__0", 95)])
    return str(good / "{synthetic-000000,bad}.tar")


def test_bad_samples_are_skipped_and_counted(corpora, tmp_path) -> None:
    path = _bad_shard(corpora, tmp_path)
    dm = _dm({"mixed": path}, clip_length=4, samples_per_epoch=24, num_workers=1)  # counts cross processes
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 24 and not any("bad-" in k for k in keys)
    assert set(dm.skipped) == {"mixed/bad_depth", "mixed/bad_extrinsics", "mixed/too_short"}
    assert dm.skipped_total == sum(dm.skipped.values()) >= 3
    raising = _dm({"mixed": {"path": path, "on_error": "raise"}}, clip_length=4,
                  samples_per_epoch=24)
    with pytest.raises(ShardError, match=r"bad\.tar.*synthetic__bad-"):
        list(raising.train_dataloader())
    evaluating = VideoDataModule(val_sources={"mixed": path}, clip_length=4, short_side=32,
                                 sizes=SMALL, num_workers=0)
    with pytest.raises(ShardError):  # evaluation raises by default
        list(evaluating.val_dataloader())


def test_validation_never_scores_sky(corpora, tmp_path) -> None:
    """``sky: far`` (the paper recipe) supervises sky in training only: validation masks it."""
    path = str(corpora["open"])
    sources = {"o": {"path": path, "max_depth": 20.0}}
    make_synthetic_corpus(tmp_path / "open2", 2, 4, 4, (48, 64), seed=3, clips_per_shard=1, progress=False,
                          config=SynthConfig(kind="open"))
    held = _dm({"o": {"path": str(tmp_path / "open2"), "max_depth": 20.0}}, sky="far", holdout_shards=1,
               hflip_prob=0.0)
    explicit = VideoDataModule(train_sources=sources, val_sources=sources, sky="far", batch_size=2,
                               clip_length=4, short_side=32, sizes=SMALL, num_workers=0)
    scored = VideoDataModule(train_sources=sources, val_sources={"o": {**sources["o"], "sky": "far"}},
                             sky="far", batch_size=2, clip_length=4, short_side=32, sizes=SMALL, num_workers=0)
    for dm in (held, explicit):
        batch = next(iter(dm.val_dataloader()))
        assert not batch["valid"].all() and (batch["depth"][batch["valid"]] < 20.0).any()
    far = next(iter(scored.val_dataloader()))  # a source that asks for sky scoring gets it
    assert far["valid"].all()
    with pytest.raises(ValueError, match="eval_sky"):
        VideoDataModule(train_sources=sources, eval_sky="blue")


def test_holdout_and_deterministic_validation(corpora) -> None:
    dm = _dm(corpora["posed"], holdout_shards=1, samples_per_epoch=16)
    val = [b["key"] for b in dm.val_dataloader()]
    assert val == [b["key"] for b in dm.val_dataloader()]
    val_keys = {k for ks in val for k in ks}
    assert len(val_keys) == 1  # the last shard's one clip
    train_keys = {k for b in dm.train_dataloader() for k in b["key"]}
    assert train_keys and not train_keys & val_keys
    assert next(iter(dm.val_dataloader()))["video"].shape[-2:] == SMALL[0]
    assert dm.test_dataloader() == []
    with pytest.raises(ValueError, match="holdout_shards"):
        _dm(corpora["posed"], holdout_shards=4).setup()


def test_resume_state_advances_epochs(corpora) -> None:
    dm = _dm(corpora["posed"])
    loader = dm.train_dataloader()
    [b["key"] for b in loader]
    second = [b["key"] for b in loader]
    state = dm.state_dict()
    assert state["train_epoch"] == 2
    fresh = _dm(corpora["posed"])
    fresh.load_state_dict({"train_epoch": 1})
    assert [b["key"] for b in fresh.train_dataloader()] == second


def test_config_errors_and_yaml_parsing(corpora) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        VideoDataModule(train_sources={"s": {"path": "x", "wieght": 2}})
    with pytest.raises(ValueError, match="sky"):
        VideoDataModule(train_sources={"s": {"path": "x", "sky": "blue"}})
    with pytest.raises(FileNotFoundError, match="gemdepth data synth"):
        VideoDataModule(train_sources={"s": "does/not/exist"}).setup()
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VideoDataModule, "data")
    cfg = parser.parse_string(f"""
data:
  train_sources:
    synthetic: {{path: {corpora['posed']}, weight: 2.0}}
    free: {corpora['free']}
  sizes: [[32, 32], [32, 48]]
  short_side: 32
  clip_length: 4
  num_workers: 0
""")
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, VideoDataModule)
    assert dm.sizes == SMALL
    b = next(iter(dm.train_dataloader()))
    assert b["video"].shape[1] == 4


def test_crop_plans_follow_the_paper_and_align_draft_decoding() -> None:
    from gemdepth.data.transforms import PAPER_SIZES, decode_crop_rgb, plan_crop

    for size in PAPER_SIZES:  # short side 720 -> 518, crop along the long side
        box = plan_crop((720, 1280), size, 518, np.random.default_rng(0), jitter=1.0)
        assert 0 <= box.top <= 720 - box.height and 0 <= box.left <= 1280 - box.width
        assert box.scale_y == pytest.approx(518 / 720, rel=5e-3)
        assert box.scale_x == pytest.approx(518 / 720, rel=5e-3)
    box = plan_crop((168, 224), (56, 84), 56, np.random.default_rng(1), jitter=1.0)
    assert box.reduce == 2 and box.top % 2 == box.left % 2 == box.height % 2 == box.width % 2 == 0
    yy, xx = np.mgrid[0:168, 0:224]
    img = np.stack([127 + 100 * np.sin(xx / 15 + c) * np.cos(yy / 11) for c in range(3)], -1)

    payloads = {}
    for fmt in ("JPEG", "PNG"):  # JPEG: draft decoding at 1/2; PNG: 2x2 block means instead
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format=fmt, quality=95)
        payloads[fmt] = buf.getvalue()
    jpeg = decode_crop_rgb([payloads["JPEG"]], box).float()
    png = decode_crop_rgb([payloads["PNG"]], box).float()
    assert jpeg.shape == png.shape == (1, 3, 56, 84)
    assert (jpeg - png).abs().mean() < 3.0
    from dataclasses import replace

    assert box.width == 224 and box.height < 168  # the crop runs along the free (vertical) axis
    shifted = replace(box, top=box.top + 8 if box.top + 8 + box.height <= 168 else box.top - 8)
    assert (decode_crop_rgb([payloads["PNG"]], shifted).float() - png).abs().mean() > 10


# --------------------------------------------------------------------------- shard integrity
def _tampered_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-shard corpus whose second shard had one JPEG frame replaced by another valid JPEG
    after writing (index.json, with its sha256, untouched). Returns (folder, tampered shard)."""
    from shard_helpers import replace_member

    folder = tmp_path / "corpus"
    write_corpus(iter_synthetic_clips(2, 8, 8, (48, 64), seed=6), folder, "synthetic",
                 clips_per_shard=1, progress=False)
    shard = folder / "synthetic-000001.tar"
    key = next(iter_raw_samples(shard))["__key__"]
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(buf, format="JPEG", quality=95)
    replace_member(shard, f"{key}.rgb.0003.jpg", buf.getvalue())
    return folder, shard


def test_training_verifies_checksums_once_per_worker_and_skips_changed_shards(
        tmp_path: Path, monkeypatch) -> None:
    import gemdepth.data.shards as shards_mod

    folder, shard = _tampered_corpus(tmp_path)
    hashed: list[str] = []
    real = shards_mod._open_verified

    def counting(path, sha256):
        if sha256 is not None:
            hashed.append(Path(path).name)
        return real(path, sha256)

    monkeypatch.setattr(shards_mod, "_open_verified", counting)
    dm = _dm({"syn": str(folder)}, samples_per_epoch=16)
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 16 and all(k.startswith("synthetic__scene-000000") for k in keys)
    assert dm.skipped == {"syn/checksum_mismatch": 1}  # the whole shard, counted once
    assert sorted(hashed) == ["synthetic-000000.tar", "synthetic-000001.tar"]  # each once
    raising = _dm({"syn": {"path": str(folder), "on_error": "raise"}}, samples_per_epoch=16)
    with pytest.raises(ShardError, match=r"synthetic-000001\.tar.*checksum mismatch"):
        list(raising.train_dataloader())


def _depth_png8(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, 60, np.uint8)).save(buf, format="PNG")  # mode L
    return buf.getvalue()


def test_8bit_depth_png_is_a_counted_skip_in_training(tmp_path: Path) -> None:
    from shard_helpers import register_raw_shard

    folder = tmp_path / "corpus"
    write_corpus(iter_synthetic_clips(1, 8, 8, (48, 64), seed=6), folder, "synthetic",
                 progress=False)
    clip = next(iter(iter_synthetic_clips(1, 8, 8, (48, 64), seed=8)))
    sample = _encode_clip(clip, "synthetic__eightbit__0", 95)
    for i in range(8):
        sample[f"depth.{i:04d}.png"] = _depth_png8((48, 64))
    register_raw_shard(folder / "eightbit.tar", [sample], corpus="synthetic")
    dm = _dm({"syn": str(folder)}, samples_per_epoch=12)
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 12 and not any("eightbit" in k for k in keys)
    assert set(dm.skipped) == {"syn/bad_depth"} and dm.skipped_total >= 1
    raising = _dm({"syn": {"path": str(folder), "on_error": "raise"}}, samples_per_epoch=12)
    with pytest.raises(ShardError, match=r"eightbit\.tar.*synthetic__eightbit__0.*8-bit"):
        list(raising.train_dataloader())


def test_source_without_complete_index_is_refused(tmp_path: Path) -> None:
    from gemdepth.data.shards import IncompleteCorpusError

    folder = tmp_path / "corpus"
    write_corpus(iter_synthetic_clips(1, 8, 8, (48, 64), seed=6), folder, "synthetic",
                 progress=False)
    (folder / "index.json").unlink()
    with pytest.raises(IncompleteCorpusError, match=r"no index\.json.*--resume"):
        _dm({"syn": str(folder)}).setup()
