"""The training loader on raw16/zlib16 depth gives the batches of png16 depth, and keeps its
DataLoader workers across epochs (``persistent_workers``, default on) without repeating an
epoch's samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loader_codecs")
    out = {}
    for codec in ("png16", "raw16", "zlib16"):  # the same seeded renders, with sky masks
        out[codec] = root / codec
        make_synthetic_corpus(out[codec], 2, 6, 6, (96, 128), seed=3, clips_per_shard=1,
                              progress=False, config=SynthConfig(kind="open"),
                              depth_codec=codec)
    return out


def _batches(path: Path, **kw) -> list[dict]:
    args = {"batch_size": 2, "clip_length": 4, "stride_range": (1, 2), "short_side": 64,
            "sizes": [(64, 64), (48, 64)], "num_workers": 0, "samples_per_epoch": 8, "seed": 0,
            "hflip_prob": 0.5, "sky": "invalid"}
    dm = VideoDataModule(train_sources={"syn": str(path)}, **{**args, **kw})
    return list(dm.train_dataloader())


@pytest.mark.parametrize("codec", ["raw16", "zlib16"])
@pytest.mark.parametrize("options", [{}, {"fast_decode": False}, {"normalize": "device"}])
def test_depth_codecs_give_the_png16_batches(corpora, codec, options) -> None:
    ref = _batches(corpora["png16"], **options)
    new = _batches(corpora[codec], **options)
    assert len(ref) == len(new) == 4
    for r, n in zip(ref, new):
        assert r["key"] == n["key"]
        for k in ("video", "depth", "valid", "intrinsics", "extrinsics", "has_pose"):
            assert r[k].dtype == n[k].dtype and torch.equal(r[k], n[k]), k
        assert r["valid"].any() and (~r["valid"]).any()  # the sky masks took part


def test_persistent_workers_are_on_by_default_where_there_are_workers(corpora) -> None:
    def loader(**kw):
        return VideoDataModule(train_sources={"syn": str(corpora["raw16"])}, clip_length=4,
                               short_side=64, sizes=[(64, 64)], **kw).train_dataloader()

    assert loader(num_workers=2).persistent_workers is True
    assert loader(num_workers=0).persistent_workers is False  # torch refuses it without workers
    assert loader(num_workers=2, persistent_workers=False).persistent_workers is False


def test_persistent_workers_stream_each_epoch_as_fresh_ones_would(corpora) -> None:
    """Workers kept alive see each new epoch (the shared epoch counter): three epochs give
    the keys and depth of fresh workers per epoch, and the epochs differ."""

    def epochs(persistent: bool) -> list[list[tuple[str, float]]]:
        dm = VideoDataModule(train_sources={"syn": str(corpora["raw16"])}, batch_size=1,
                             clip_length=2, stride_range=(1, 3), short_side=64,
                             sizes=[(64, 64)], num_workers=2, samples_per_epoch=6, seed=1,
                             persistent_workers=persistent)
        loader = dm.train_dataloader()
        out = [[(b["key"][0], float(b["depth"].sum())) for b in loader] for _ in range(3)]
        if persistent:
            assert loader._iterator is not None  # the same workers served every epoch
        return out

    kept, fresh = epochs(True), epochs(False)
    assert kept == fresh
    assert len({tuple(e) for e in kept}) == 3  # resampled anew every epoch


def test_resume_into_a_loader_with_persistent_workers(corpora) -> None:
    """A position loaded into a loader whose workers are alive replaces them with fresh ones
    that continue exactly there; the epoch after it is the one fresh workers would stream."""

    def module(persistent: bool) -> VideoDataModule:
        return VideoDataModule(train_sources={"syn": str(corpora["raw16"])}, batch_size=1,
                               clip_length=2, stride_range=(1, 3), short_side=64,
                               sizes=[(64, 64)], num_workers=2, samples_per_epoch=6, seed=2,
                               persistent_workers=persistent)

    def keys(batches) -> list[tuple[str, float]]:
        return [(b["key"][0], float(b["depth"].sum())) for b in batches]

    fresh = module(False).train_dataloader()
    want = [keys(fresh) for _ in range(3)]
    loader = module(True).train_dataloader()
    assert keys(loader) == want[0]
    it = iter(loader)
    head = keys(next(it) for _ in range(2))
    state = loader.state_dict()
    assert head + keys(it) == want[1]  # the uninterrupted epoch
    loader.load_state_dict(state)
    assert head + keys(loader) == want[1]  # resumed after two batches, live workers replaced
    assert keys(loader) == want[2]
