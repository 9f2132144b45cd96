"""Streaming windowing against an independent plain re-implementation of the official algorithm,
and against the official fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fakes import (
    FakeVideoModel,
    ShiftingModel,
    make_frames,
    reference_infer,
    reference_network_size,
    reference_preprocess,
)
from safetensors.torch import load_file

from gemdepth.inference import (
    OFFICIAL_KEYFRAMES,
    VideoInference,
    WindowConfig,
    infer_video,
    network_size,
    preprocess_frames,
)
from gemdepth.inference.windowing import default_keyframes


def _run(model, frames, **kwargs):
    infos = []
    results = list(infer_video(model, frames, on_window=infos.append, **kwargs))
    return results, infos


def _close(ours: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rel * float(np.abs(ref).max()))


# --------------------------------------------------------------------------- settings
def test_default_keyframes_are_official() -> None:
    assert default_keyframes(32, 10, 8) == OFFICIAL_KEYFRAMES
    assert WindowConfig().keyframes == OFFICIAL_KEYFRAMES
    assert WindowConfig().stride == 22 and WindowConfig().align == 2
    assert default_keyframes(16, 6, 4) == (0, 6, 12, 13, 14, 15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 32, "overlap": 32}, "overlap must be in"),
        ({"window": 32, "overlap": 10, "interp": 10}, "interp"),
        ({"window": 32, "overlap": 10, "keyframes": (1, 12, 24, 25, 26, 27, 28, 29, 30, 31)}, "global anchor"),
        ({"window": 32, "overlap": 10, "keyframes": (0, 12, 23, 25, 26, 27, 28, 29, 30, 31)}, "cross-faded"),
        ({"window": 32, "overlap": 10, "keyframes": (0, 12)}, "must list overlap"),
        ({"window": 12, "overlap": 10, "interp": 3}, "stride"),
    ],
)
def test_window_config_rejects_inconsistent_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        WindowConfig(**kwargs)


@pytest.mark.parametrize(
    "size", [(100, 160), (480, 640), (720, 1280), (1080, 1920), (50, 37), (20, 70), (518, 518), (97, 1000)]
)
@pytest.mark.parametrize("input_size", [98, 518])
def test_network_size_follows_the_official_rule(size, input_size) -> None:
    assert network_size(*size, input_size) == reference_network_size(*size, input_size)


def test_network_size_examples() -> None:
    assert network_size(100, 160, 98) == (98, 154)  # the fixture's non-uniform resize
    assert network_size(1080, 1920, 518) == (518, 924)
    assert network_size(720, 1920, 518) == (350, 938)  # aspect 2.67 > 1.78 shrinks the input size
    with pytest.raises(ValueError, match="aspect 30.93"):
        network_size(97, 3000, 98)


# --------------------------------------------------------------------------- reference parity
CASES = [(1, (30, 44)), (31, (30, 44)), (32, (50, 37)), (33, (30, 44)), (54, (20, 70)), (70, (30, 44)), (100, (24, 40))]


@pytest.mark.parametrize(("n", "shape"), CASES)
def test_streaming_matches_plain_reference(n, shape) -> None:
    frames = make_frames(n, *shape, seed=n)
    model = FakeVideoModel().eval()
    ref = reference_infer(model, frames, input_size=28)
    results, infos = _run(model, frames, input_size=28, chain_cameras=False)
    assert [r.index for r in results] == list(range(n))
    depth = np.stack([r.depth for r in results])
    assert depth.shape == (n, *shape) and depth.dtype == np.float32
    _close(depth, ref["depth"])
    np.testing.assert_allclose(np.stack([r.extrinsics for r in results]), ref["extrinsics"], atol=1e-6)
    np.testing.assert_allclose(np.stack([r.intrinsics for r in results]), ref["intrinsics"], atol=1e-5)
    assert len(infos) == -(-n // 22)  # one window per started stride
    np.testing.assert_allclose(
        np.array([(i.scale, i.shift) for i in infos[1:]]).reshape(-1, 2),
        np.array(ref["scales"]).reshape(-1, 2),
        rtol=1e-4,
        atol=1e-5,
    )
    for r in results:  # the frame each result carries is the input frame
        assert r.image is not None and np.array_equal(r.image, frames[r.index])


def test_chunked_processing_gives_the_same_result() -> None:
    frames = make_frames(54, 30, 44, seed=9)
    whole = list(infer_video(FakeVideoModel().eval(), frames, input_size=28))
    runner = VideoInference(FakeVideoModel().eval(), input_size=28, chunk_bytes=3 * 30 * 44 * 4)  # 3 maps, 1 frame
    chunked = list(runner.run(frames))
    np.testing.assert_array_equal(np.stack([r.depth for r in chunked]), np.stack([r.depth for r in whole]))
    np.testing.assert_array_equal(np.stack([r.extrinsics for r in chunked]), np.stack([r.extrinsics for r in whole]))


def test_windows_carry_frame_zero_and_key_frames() -> None:
    frames = make_frames(100, 24, 40)
    _, infos = _run(FakeVideoModel().eval(), frames, input_size=28)
    assert [i.start for i in infos] == [0, 22, 44, 66, 88]
    for info in infos[1:]:
        s = info.start
        assert info.slot_frames[0] == 0  # the global anchor
        assert info.slot_frames[1] == s - 10  # previous window's slot 12
        assert info.slot_frames[2:] == [min(f, 99) for f in range(s + 2, s + 32)]


def test_clamp_and_negative_shift_match_reference() -> None:
    frames = make_frames(70, 30, 44, seed=3)
    ref = reference_infer(ShiftingModel().eval(), frames, input_size=28)
    results, infos = _run(ShiftingModel().eval(), frames, input_size=28)
    assert all(i.shift < 0 for i in infos[1:])
    depth = np.stack([r.depth for r in results])
    assert depth.min() == 0.0
    _close(depth, ref["depth"])


def test_custom_window_settings_match_reference() -> None:
    frames = make_frames(47, 30, 44, seed=5)
    model = FakeVideoModel().eval()
    ref = reference_infer(model, frames, 28, window=16, overlap=6, keyframes=(0, 6, 12, 13, 14, 15), interp=4)
    results, infos = _run(model, frames, input_size=28, window=16, overlap=6, interp=4, chain_cameras=False)
    _close(np.stack([r.depth for r in results]), ref["depth"])
    assert [i.start for i in infos] == [0, 10, 20, 30, 40]


def test_results_stream_while_frames_are_read() -> None:
    consumed = []

    def frames():
        for i, f in enumerate(make_frames(120, 24, 40)):
            consumed.append(i)
            yield f

    lags = []
    for r in infer_video(FakeVideoModel().eval(), frames(), input_size=28):
        lags.append(len(consumed) - r.index)
    assert lags[0] <= 32  # the first result comes after one window of frames, not the whole video
    assert max(lags) <= 32 + 8  # never more than a window (plus the pending cross-fade) ahead


def test_no_cameras_and_bad_frames() -> None:
    frames = make_frames(5, 24, 40)
    results = list(infer_video(FakeVideoModel(cameras=False).eval(), frames, input_size=28))
    assert all(r.extrinsics is None and r.intrinsics is None for r in results)
    with pytest.raises(ValueError, match="no frames"):
        list(infer_video(FakeVideoModel().eval(), [], input_size=28))
    mixed = [frames[0], frames[1], np.zeros((30, 40, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 2: size 30x40 differs"):
        list(infer_video(FakeVideoModel().eval(), mixed, input_size=28))
    with pytest.raises(TypeError, match="frame 0: dtype float32"):
        list(infer_video(FakeVideoModel().eval(), [frames[0].astype(np.float32)], input_size=28))
    with pytest.raises(ValueError, match="at most 16 frames"):
        infer_video(FakeVideoModel(max_frames=16).eval(), frames)


def test_max_resolution_and_precision() -> None:
    frames = make_frames(6, 60, 80)
    results = list(infer_video(FakeVideoModel().eval(), frames, input_size=28, max_resolution=40))
    assert results[0].depth.shape == (30, 40) and results[0].image.shape == (30, 40, 3)
    fp32 = np.stack([r.depth for r in infer_video(FakeVideoModel().eval(), frames, input_size=28)])
    bf16 = np.stack(
        [r.depth for r in infer_video(FakeVideoModel().eval(), frames, input_size=28, dtype=torch.bfloat16)]
    )
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())


# --------------------------------------------------------------------------- official fixture
def test_preprocessing_matches_official_fixture(official_dir) -> None:
    video = load_file(official_dir / "gemdepth_mini_video.safetensors")
    frames = video["frames"].numpy()
    size = network_size(*frames.shape[1:3], 98)
    assert size == (98, 154)
    ours = preprocess_frames(frames[[0, 69]], size)
    for got, ref in zip(ours, [video["preprocessed_frame_first"], video["preprocessed_frame_last"]]):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(reference_preprocess(frames[0], size), ours[0], rtol=0, atol=1e-6)


def test_official_long_video_fixture(official_dir) -> None:
    import gemdepth

    config = Path(__file__).resolve().parents[1] / "configs" / "official_mini_gemdepth.yaml"
    model = gemdepth.load_model(official_dir / "gemdepth_mini.safetensors", config=str(config))
    video = load_file(official_dir / "gemdepth_mini_video.safetensors")
    frames = video["frames"].numpy()
    results, infos = _run(model, list(frames), input_size=98, device="cpu")
    depth = torch.from_numpy(np.stack([r.depth for r in results]))
    ref = video["depth"]
    torch.testing.assert_close(depth, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    assert [i.start for i in infos] == [0, 22, 44, 66]
    got = torch.tensor([(i.scale, i.shift) for i in infos[1:]], dtype=torch.float32)
    torch.testing.assert_close(
        got, video["alignment_scale_shift"], rtol=0, atol=1e-4 * video["alignment_scale_shift"].abs().max().item()
    )
