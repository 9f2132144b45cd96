"""VideoDepthModel: input checks, host behaviour, plug-in wiring, config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gemdepth.models import PLUGINS, VideoFeatures, build_model, normalize_config
from gemdepth.models.plugins.base import PlugIn

MINI_ENCODER = {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]}


def mini_config(host: str = "vda", plugins: list | None = None, num_frames: int = 8) -> dict:
    return {
        "host": host,
        "encoder": dict(MINI_ENCODER),
        "head": {"features": 32, "out_channels": [32, 32, 64, 64], "num_frames": num_frames},
        "plugins": plugins or [],
    }


def _open(model: nn.Module) -> nn.Module:
    """Random-but-nonzero motion modules and a positive last bias, so the output reacts to everything."""
    torch.manual_seed(3)
    for mm in getattr(model.head, "motion_modules", []):
        nn.init.normal_(mm.temporal_transformer.proj_out.weight, std=0.2)
    nn.init.constant_(model.head.scratch.output_conv2[2].bias, 1.0)
    return model.eval()


class _EarlyProbe(PlugIn):
    """Test plug-in: zeroes the last token map and reports cameras through extras."""

    position = "early"

    def __init__(self, dim: int, head_features: int, zero: bool = True) -> None:
        super().__init__()
        self.dim, self.head_features, self.zero = dim, head_features, zero
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, feats: VideoFeatures) -> VideoFeatures:
        b, t = feats.batch, feats.frames
        if self.zero:
            feats.tokens[3] = feats.tokens[3] * 0.0
        feats.extras.update(
            pose_enc=[torch.zeros(b, t, 9), torch.ones(b, t, 9)],
            extrinsics=torch.eye(4).expand(b, t, 4, 4),
            intrinsics=torch.eye(3).expand(b, t, 3, 3),
            probe=torch.tensor([feats.patch_h, feats.patch_w, feats.image_h, feats.image_w]),
        )
        return feats


class _MapProbe(PlugIn):
    """Test plug-in at a head position: records what it sees and scales the map."""

    calls: list = []

    def __init__(self, dim: int, head_features: int, position: str = "mid", scale: float = 1.0) -> None:
        super().__init__()
        self.position, self.scale = position, scale

    def forward_map(self, x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        type(self).calls.append((self.position, tuple(x.shape), batch, frames))
        return x * self.scale


for _name, _cls in (("_test_early", _EarlyProbe), ("_test_map", _MapProbe)):
    if _name not in PLUGINS:
        PLUGINS.register(_name)(_cls)


@pytest.fixture(scope="module")
def vda_model() -> nn.Module:
    return _open(build_model(mini_config("vda")))


def test_output_shape_and_non_negative(vda_model: nn.Module) -> None:
    with torch.no_grad():
        out = vda_model(torch.randn(2, 3, 3, 42, 56))
    assert out.depth.shape == (2, 3, 42, 56)
    assert out.depth.min() >= 0 and out.depth.max() > 0
    assert out.pose_enc is None and out.extrinsics is None and out.intrinsics is None


def test_dav2_frames_are_independent_vda_frames_are_not() -> None:
    video = torch.randn(1, 3, 3, 28, 42)
    edited = video.clone()
    edited[:, 2] += 1.0
    torch.manual_seed(0)
    dav2 = _open(build_model(mini_config("dav2")))
    vda = _open(build_model(mini_config("vda")))
    with torch.no_grad():
        d_a, d_b = dav2(video).depth, dav2(edited).depth
        v_a, v_b = vda(video).depth, vda(edited).depth
    torch.testing.assert_close(d_a[:, :2], d_b[:, :2])
    assert (d_a[:, 2] - d_b[:, 2]).abs().max() > 1e-4
    assert (v_a[:, 0] - v_b[:, 0]).abs().max() > 1e-4


def test_batch_elements_do_not_mix(vda_model: nn.Module) -> None:
    video = torch.randn(2, 2, 3, 28, 28)
    edited = video.clone()
    edited[1] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(vda_model(video).depth[0], vda_model(edited).depth[0])


@pytest.mark.parametrize(
    ("shape", "dtype", "error", "message"),
    [
        ((3, 3, 28, 28), torch.float32, ValueError, r"5-D \(B, T, 3, H, W\).*video\[None\]"),
        ((1, 2, 4, 28, 28), torch.float32, ValueError, "3 \\(RGB\\) channels"),
        ((1, 2, 3, 100, 28), torch.float32, ValueError, "height 100 \\(nearest valid: 98 or 112\\)"),
        ((1, 2, 3, 28, 30), torch.float32, ValueError, "width 30 \\(nearest valid: 28 or 42\\)"),
        ((1, 2, 3, 28, 28), torch.uint8, TypeError, "not floating point"),
        ((1, 9, 3, 28, 28), torch.float32, ValueError, "at most 8 \\(num_frames\\)"),
    ],
)
def test_bad_inputs(vda_model: nn.Module, shape: tuple, dtype: torch.dtype, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        vda_model(torch.zeros(shape, dtype=dtype))


def test_plugins_are_wired_in_order_and_extras_reach_the_output() -> None:
    _MapProbe.calls.clear()
    config = mini_config(
        "vda",
        plugins=[
            {"name": "_test_early"},
            {"name": "_test_map", "position": "late", "scale": 1.0},
        ],
    )
    model = _open(build_model(config))
    assert list(model.plugins) == ["_test_early", "_test_map"]
    assert model.plugins["_test_early"].dim == 64 and model.plugins["_test_early"].head_features == 32
    video = torch.randn(2, 3, 3, 28, 42)
    with torch.no_grad():
        out = model(video)
        model.plugins["_test_early"].zero = False
        out_plain = model(video)
    assert _MapProbe.calls[0] == ("late", (6, 32, 16, 24), 2, 3)
    assert [p[0, 0, 0].item() for p in out.pose_enc] == [0.0, 1.0]
    assert out.extrinsics.shape == (2, 3, 4, 4) and out.intrinsics.shape == (2, 3, 3, 3)
    assert out.extras["probe"].tolist() == [2, 3, 28, 42]
    assert (out.depth - out_plain.depth).abs().max() > 1e-4  # the early plug-in's edit reached the head


def test_mid_hook_runs_on_path4() -> None:
    _MapProbe.calls.clear()
    model = _open(build_model(mini_config("dav2", plugins=[{"name": "_test_map", "position": "mid", "scale": 0.0}])))
    plain = _open(build_model(mini_config("dav2")))
    plain.load_state_dict(model.state_dict(), strict=False)
    video = torch.randn(1, 2, 3, 28, 42)
    with torch.no_grad():
        a, b = model(video).depth, plain(video).depth
    assert _MapProbe.calls == [("mid", (2, 32, 2, 3), 1, 2)]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**mini_config(), "decoder": {}}, "unknown model config keys \\['decoder'\\]"),
        ({**mini_config(), "host": "midas"}, "unknown host 'midas'; known: dav2, vda"),
        ({**mini_config(), "plugins": [{"name": "nope"}]}, "unknown plug-in 'nope'; known: .*_test_early"),
        ({**mini_config(), "plugins": [{"kind": "gem"}]}, "needs a 'name'"),
        ({**mini_config(), "head": {"features": 32}}, "head.out_channels is required"),
        ({**mini_config(), "head": {"width": 3}}, "unknown head keys \\['width'\\]"),
        ({"host": "vda"}, "needs 'encoder'"),
    ],
)
def test_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_config(config)


def test_plugin_option_errors_name_the_plugin() -> None:
    with pytest.raises(ValueError, match="plug-in '_test_map' rejected its options"):
        build_model(mini_config(plugins=[{"name": "_test_map", "colour": "red"}]))


def test_normalize_fills_head_defaults_for_presets() -> None:
    cfg = normalize_config({"host": "dav2", "encoder": "vitb"})
    assert cfg["head"] == {"features": 128, "out_channels": [96, 192, 384, 768], "num_frames": 32,
                           "use_bn": False, "use_clstoken": False}
    assert cfg["plugins"] == []
