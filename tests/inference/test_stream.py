"""Online inference (gemdepth.stream): the step-by-step stream against a causal-mask forward of the
offline model, bounded state, alignment, every host × plug-in combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gemdepth
from gemdepth.geometry import fit_scale_shift
from gemdepth.inference.stream import FrameRing, OnlineModel, causal_reference
from gemdepth.models import build_model

GEM = {"name": "gem", "num_heads": 4, "camera_trunk_depth": 1}
COMBOS = {
    "plain": [],
    "gem": [GEM],
    "astt": [{"name": "astt", "num_heads": 2, "depth": 1}],
    "gem+astt": [GEM, {"name": "astt", "num_heads": 2}],
    "astt-mid": [{"name": "astt", "num_heads": 2, "position": "mid"}],
    "astt-late": [{"name": "astt", "num_heads": 2, "position": "late"}],
}


def tiny_model(host: str, plugins: list[dict], frames: int = 6) -> torch.nn.Module:
    """A seeded tiny model whose zero-initialised layers (motion-module outputs, ASTT projections)
    are perturbed, so every temporal path changes the output."""
    config = {
        "host": host,
        "encoder": {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 2, "layer_idx": [0, 1, 2, 3]},
        "head": {"features": 32, "out_channels": [16, 32, 32, 64], "num_frames": frames},
        "plugins": plugins,
    }
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("host", ["dav2", "vda"])
@pytest.mark.parametrize("combo", list(COMBOS))
def test_stream_equals_causal_offline_forward(host: str, combo: str) -> None:
    """For a stream no longer than the window, stepping frame by frame with cached keys/values equals
    the offline model run on the whole clip with frame-causal attention masks."""
    model = tiny_model(host, COMBOS[combo])
    torch.manual_seed(1)
    frames = 5
    video = torch.randn(1, frames, 3, 28, 42)
    with torch.inference_mode(), causal_reference(model, frames):
        ref = model(video)
    online = OnlineModel(model, window=6)
    outs = [online.step(video[:, t]) for t in range(frames)]
    depth = torch.stack([o.depth for o in outs], dim=1)
    scale = float(ref.depth.abs().max())
    torch.testing.assert_close(depth, ref.depth, rtol=0, atol=1e-5 * scale)
    if "gem" in combo:
        extr = torch.stack([o.extrinsics for o in outs], dim=1)
        intr = torch.stack([o.intrinsics for o in outs], dim=1)
        torch.testing.assert_close(extr, ref.extrinsics, rtol=0, atol=1e-5)
        torch.testing.assert_close(intr, ref.intrinsics, rtol=1e-5, atol=1e-4)
        assert len(outs[0].pose_enc) == len(ref.pose_enc)
    else:
        assert outs[0].extrinsics is None
    # the masks matter: the non-causal forward differs (except the per-frame DAv2 host alone)
    with torch.inference_mode():
        full = model(video).depth
    if host == "vda" or combo != "plain":
        assert (full - ref.depth).abs().max() > 1e-3 * scale
    else:
        torch.testing.assert_close(full, ref.depth, rtol=0, atol=1e-6 * scale)


def test_causal_reference_restores_the_model() -> None:
    model = tiny_model("vda", COMBOS["gem+astt"])
    video = torch.randn(1, 3, 3, 28, 28)
    with torch.inference_mode():
        before = model(video).depth
        with causal_reference(model, 3):
            pass
        after = model(video).depth
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_first_frame_gives_depth_and_camera() -> None:
    model = tiny_model("vda", COMBOS["gem+astt"])
    s = gemdepth.stream(model, input_size=28)
    frame = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    result = s.step(frame)
    assert result.index == 0 and result.depth.shape == (30, 40) and result.depth.dtype == np.float32
    assert np.isfinite(result.depth).all() and result.depth.min() >= 0 and result.depth.max() > 0
    assert result.extrinsics.shape == (4, 4) and result.intrinsics.shape == (3, 3)
    # frame 0 is the anchor: its pose relative to itself is the identity rotation
    np.testing.assert_allclose(result.extrinsics[3], [0, 0, 0, 1])


@pytest.mark.parametrize("host", ["dav2", "vda"])
@pytest.mark.parametrize("combo", ["plain", "gem", "astt", "gem+astt", "astt-late"])
def test_every_combination_streams_past_the_window(host: str, combo: str) -> None:
    model = tiny_model(host, COMBOS[combo], frames=4)
    s = gemdepth.stream(model, input_size=28)
    assert s.window == 4  # the model's training window by default
    rng = np.random.default_rng(0)
    for i in range(9):  # more than two windows: the ring turns
        r = s.step(rng.integers(0, 255, (28, 35, 3), dtype=np.uint8))
        assert r.index == i and r.depth.shape == (28, 35) and np.isfinite(r.depth).all()
        assert (r.extrinsics is not None) == ("gem" in combo)


def test_state_is_bounded_by_the_window() -> None:
    model = tiny_model("vda", COMBOS["gem+astt"], frames=4)
    s = gemdepth.stream(model, input_size=28, window=3)
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(12):
        s.step(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8))
        if i in (2, 5, 11):
            sizes.append(s.state_bytes())
    assert sizes[0] == sizes[1] == sizes[2]
    assert any(k.startswith("motion.") for k in sizes[0]) and any(k.startswith("gem.global") for k in sizes[0])
    assert any(k.startswith("astt.") for k in sizes[0]) and any(k.startswith("gem.camera") for k in sizes[0])
    # every key/value buffer holds exactly `window` frames
    cache = s.online._caches["motion.0.0.0"]
    assert cache.k.shape[2] == 3


def test_reset_starts_a_new_stream() -> None:
    model = tiny_model("vda", COMBOS["gem"], frames=4)
    s = gemdepth.stream(model, input_size=28)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(5)]
    first = [s.step(f).depth for f in frames]
    s.reset()
    again = [s.step(f).depth for f in frames]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="differs from the first frame"):
        s.step(np.zeros((14, 28, 3), dtype=np.uint8))


def test_depth_is_aligned_to_the_previous_frame_by_least_squares() -> None:
    model = tiny_model("dav2", [])
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(4)]
    raw = [r.depth for r in gemdepth.stream(model, input_size=28, align=False).run(frames)]
    aligned = [r.depth for r in gemdepth.stream(model, input_size=28).run(frames)]
    np.testing.assert_array_equal(aligned[0], raw[0])
    previous = torch.from_numpy(raw[0]).double()
    for t in range(1, 4):
        s, b = fit_scale_shift(torch.from_numpy(raw[t]).double(), previous)
        expected = np.clip(raw[t] * np.float32(s) + np.float32(b), 0, None)
        np.testing.assert_allclose(aligned[t], expected, rtol=0, atol=1e-6 * float(np.abs(expected).max()))
        previous = torch.from_numpy(aligned[t]).double()


def test_ring_positions_keep_the_anchor_first_and_newest_last() -> None:
    ring = FrameRing(4)
    seen = []
    for _ in range(7):
        seen.append((ring.slot, ring.position, ring.positions()))
        ring.advance()
    assert [s for s, _, _ in seen] == [0, 1, 2, 3, 1, 2, 3]
    assert seen[3][2] == [0, 1, 2, 3]
    # frame 4 overwrote slot 1: window order anchor, frame 2 (slot 2), frame 3 (slot 3), frame 4 (slot 1)
    assert seen[4][2] == [0, 3, 1, 2] and seen[4][1] == 3
    with pytest.raises(ValueError, match="at least 2 frames"):
        FrameRing(1)


def test_window_longer_than_the_position_table_is_refused() -> None:
    model = tiny_model("vda", [], frames=4)
    with pytest.raises(ValueError, match="num_frames=4"):
        gemdepth.stream(model, window=8)


def test_ctrl_c_ends_a_live_stream_cleanly() -> None:
    model = tiny_model("dav2", [])
    rng = np.random.default_rng(0)

    def camera():
        for _ in range(3):
            yield rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
        raise KeyboardInterrupt

    latencies: list[float] = []
    results = list(gemdepth.stream(model, input_size=28).run(camera(), latencies, interrupt_ends=True))
    assert [r.index for r in results] == [0, 1, 2] and len(latencies) == 3
    with pytest.raises(KeyboardInterrupt):
        list(gemdepth.stream(model, input_size=28).run(camera()))


def test_live_inputs_are_told_from_files() -> None:
    from gemdepth.inference.online_sources import _redact, _safe_name, is_live

    assert is_live("/dev/video0") and is_live("rtsp://cam.local:554/live") and is_live("http://h/x.mjpg")
    assert not is_live("clip.mp4") and not is_live("/dev/null") and not is_live("frames/")
    assert _safe_name("/dev/video2") == "video2"
    assert _safe_name("rtsp://user:pw@cam.local:554/live/main") == "cam.local_554_live_main"  # no credentials
    assert _redact("rtsp://user:pw@cam.local:554/live") == "rtsp://user:***@cam.local:554/live"
    assert _redact("http://h/x") == "http://h/x"
