"""Every frame through the encoder once: the cached-encoder windowing gives the same output as
re-encoding every window, with one encoder pass per frame, under inference_mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fakes import FakeVideoModel, make_frames

from gemdepth.inference import infer_video
from gemdepth.inference.windowing import EncoderCache, has_split_api
from gemdepth.models import build_model

MINI = Path(__file__).resolve().parents[1] / "configs" / "official_mini_gemdepth.yaml"


@pytest.fixture(scope="module")
def mini_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(str(MINI)).eval()


class _EncoderCounter:
    """Counts the frames the model's encoder processes (a forward hook on ``model.encoder``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.frames = 0
        self.inference_mode: list[bool] = []
        self._handle = model.encoder.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.frames += int(args[0].shape[0])
        self.inference_mode.append(torch.is_inference_mode_enabled())

    def close(self) -> None:
        self._handle.remove()


def _depth(results: list) -> np.ndarray:
    return np.stack([r.depth for r in results])


# --------------------------------------------------------------------------- the model's split API
def test_forward_is_decode_of_encode(mini_model) -> None:
    video = torch.randn(2, 5, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = mini_model(video)
        encoded = mini_model.encode(video)
        split = mini_model.decode(encoded, 2, 5, 28, 42)
    # the last level as tokens (GEM/ASTT read it), the others as the head's projected maps (inference)
    assert len(encoded) == 4 and encoded[3][0].shape == (10, 2 * 3, 64) and encoded[0][1].shape == (10, 64)
    assert encoded[0][0].shape == (10, mini_model.head.out_channels[0], 2, 3)
    torch.testing.assert_close(split.depth, whole.depth, rtol=0, atol=0)
    torch.testing.assert_close(split.extrinsics, whole.extrinsics, rtol=0, atol=0)
    with pytest.raises(ValueError, match="B·T = 6"):
        mini_model.decode(encoded, 2, 3, 28, 42)
    assert has_split_api(mini_model) and not has_split_api(FakeVideoModel())


# --------------------------------------------------------------------------- the cache itself
def _rows(ids: list[int], dim: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Encoder-shaped rows whose values name their frame (tokens = frame index + map/10)."""
    index = torch.tensor(ids, dtype=torch.float32)
    return [(index.view(-1, 1, 1).expand(-1, 2, dim) + m / 10, index.view(-1, 1).expand(-1, dim) + m / 10)
            for m in range(4)]


def test_cache_gathers_in_slot_order_and_retains_only_what_is_asked() -> None:
    cache = EncoderCache()
    cache.add([0, 1, 2], _rows([0, 1, 2]))
    cache.add([7, 8], _rows([7, 8]))
    ids = [0, 7, 2, 8, 8, 8]  # mixed chunks, repeats (end-of-video padding)
    out = cache.gather(ids)
    for m, (tokens, cls) in enumerate(out):
        expected = torch.tensor(ids, dtype=torch.float32) + m / 10
        torch.testing.assert_close(tokens[:, 0, 0], expected)
        torch.testing.assert_close(cls[:, 0], expected)
    cache.retain([8, 0, 8])
    assert cache.frames == [8, 0] and len(cache) == 2
    with pytest.raises(KeyError, match=r"frames \[1\] are not in the encoder cache"):
        cache.gather([0, 1])
    with pytest.raises(ValueError, match="rows for 3 frame indices"):
        cache.add([3, 4, 5], _rows([3, 4]))


# --------------------------------------------------------------------------- windowing
# 1: one short window; 23 and 31: a last window without new frames (all padding from the
# previous window's last frame); 33, 54: a partial last window; 76: the example.
@pytest.mark.parametrize("n", [1, 23, 31, 33, 54, 76])
def test_cached_encoder_gives_the_uncached_output(mini_model, n) -> None:
    frames = make_frames(n, 30, 44, seed=n)
    plain = list(infer_video(mini_model, frames, input_size=28, cache_encoder=False))
    cached = list(infer_video(mini_model, frames, input_size=28))
    assert [r.index for r in cached] == list(range(n))
    ref = _depth(plain)
    np.testing.assert_allclose(_depth(cached), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(
        np.stack([r.extrinsics for r in cached]), np.stack([r.extrinsics for r in plain]), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        np.stack([r.intrinsics for r in cached]), np.stack([r.intrinsics for r in plain]), rtol=1e-5, atol=0
    )


def test_encoder_batches_do_not_change_the_output(mini_model) -> None:
    frames = make_frames(40, 30, 44, seed=4)
    whole = _depth(list(infer_video(mini_model, frames, input_size=28)))
    small = _depth(list(infer_video(mini_model, frames, input_size=28, encoder_batch=5)))
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    with pytest.raises(ValueError, match="encoder_batch must be at least 1"):
        infer_video(mini_model, frames, encoder_batch=0)


@pytest.mark.parametrize("n", [1, 23, 76, 100])
def test_every_frame_goes_through_the_encoder_once(mini_model, n) -> None:
    frames = make_frames(n, 30, 44, seed=2)
    counter = _EncoderCounter(mini_model)
    try:
        results = list(infer_video(mini_model, frames, input_size=28))
        cached, modes = counter.frames, counter.inference_mode
        counter.frames = 0
        list(infer_video(mini_model, frames, input_size=28, cache_encoder=False))
        plain = counter.frames
    finally:
        counter.close()
    assert len(results) == n
    assert cached / n == 1.0
    windows = -(-n // 22)
    assert plain == 32 * windows  # what every window re-encoding gives (76 frames: 128, 1.68 per frame)
    assert all(modes)  # the encoder ran under torch.inference_mode


def test_inference_mode_inside_not_between_results(mini_model) -> None:
    """The model runs under inference_mode, but the consumer's code between yields does not."""
    seen: list[bool] = []
    handle = mini_model.head.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    try:
        for result in infer_video(mini_model, make_frames(30, 30, 44), input_size=28):
            assert not torch.is_inference_mode_enabled()
            del result
    finally:
        handle.remove()
    assert seen and all(seen)


def test_models_without_the_split_api_still_run_whole_windows() -> None:
    model = FakeVideoModel().eval()
    results = list(infer_video(model, make_frames(40, 24, 40), input_size=28))
    assert len(results) == 40 and model.calls == [(1, 32, 3, 28, 42)] * 2
