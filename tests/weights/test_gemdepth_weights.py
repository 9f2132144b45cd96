"""Official GemDepth weights: full-model parity, the ViT-L key inventory, partial and bad loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gemdepth
from gemdepth.models import build_model, count_parameters
from gemdepth.models.presets import load_config_file
from gemdepth.weights.common import CheckpointError, load_state_file
from gemdepth.weights.dav2 import dav2_adapter
from gemdepth.weights.gemdepth import gemdepth_adapter, plugin_allow_missing
from gemdepth.weights.vda import vda_adapter
from official_helpers import official_key_state

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "official_mini_gemdepth.yaml"


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_full_model_matches_official(official_dir: Path) -> None:
    io = load_file(official_dir / "gemdepth_mini_io.safetensors")
    model = gemdepth.load_model(official_dir / "gemdepth_mini.safetensors", config=str(CONFIG))
    assert not model.training
    with torch.no_grad():
        out = model(io["input"])
    _close(out.depth, io["depth"])
    _close(torch.stack(out.pose_enc), io["pose_enc_iters"])
    _close(out.extrinsics, io["extrinsic"])
    assert torch.equal(torch.isinf(out.intrinsics), io["intrinsic_is_inf"])
    _close(out.intrinsics, io["intrinsic"])
    # masks 'none': every frame gets the identity pose
    model.plugins["gem"].eval_feed_pose = False
    with torch.no_grad():
        none = model(io["input"])
    _close(none.depth, io["none.depth"])
    assert torch.equal(none.extrinsics, out.extrinsics)


def test_released_gemdepth_keys_all_accounted_for(official_dir: Path) -> None:
    keys_dir = official_dir / "keys"
    state = official_key_state(keys_dir / "gemdepth-vitl.txt")
    with torch.device("meta"):
        model = build_model("gemdepth-vda-vitl")
    target = {k: v.shape for k, v in model.state_dict().items()}
    result = gemdepth_adapter().adapt_report(state, target)  # raises on any misfit
    assert set(result.state) == set(target) and not result.missing_allowed
    assert len(result.state) + len(result.unused) == len(state) == 767
    summary = json.loads((keys_dir / "summary.json").read_text())["gemdepth-vitl.txt"]
    # exactly the parameters that never receive a gradient, plus the unused top-level pe buffer
    assert set(result.unused) == set(summary["unused_parameters"]) | {"pos_encoder.pe"}
    assert count_parameters(model) == summary["parameters"] - summary["unused_elements"]


@pytest.mark.parametrize("family,host", [("vda", "vda"), ("dav2", "dav2")])
def test_host_weights_into_gemdepth_need_the_allow_list(official_dir: Path, family: str, host: str) -> None:
    weights = official_dir / f"{family}_mini.safetensors"
    config = load_config_file(CONFIG)
    config["host"] = host
    with pytest.raises(CheckpointError, match=r"plugins\.gem\.camera_token"):
        gemdepth.load_model(weights, config=copy.deepcopy(config))
    model = build_model(config)
    adapter = vda_adapter() if family == "vda" else dav2_adapter()
    target = {k: v.shape for k, v in model.state_dict().items()}
    result = adapter.adapt_report(load_state_file(weights), target, plugin_allow_missing())
    assert result.missing_allowed and all(k.startswith("plugins.") for k in result.missing_allowed)
    assert {k.split(".")[1] for k in result.missing_allowed} == {"gem", "astt"}
    # the named allow-list of load_model does the same end to end
    loaded = gemdepth.load_model(weights, config=copy.deepcopy(config), partial="new-modules")
    with torch.no_grad():
        out = loaded(torch.randn(1, 2, 3, 28, 42))
    assert out.depth.shape == (1, 2, 28, 42) and len(out.pose_enc) == 4


def test_other_architecture_is_refused_with_the_keys(official_dir: Path) -> None:
    config = load_config_file(CONFIG)
    config["plugins"][1]["spatial"] = False
    with pytest.raises(CheckpointError, match=r"spatial_blocks\.0\.attn\.qkv\.weight"):
        gemdepth.load_model(official_dir / "gemdepth_mini.safetensors", config=config)
