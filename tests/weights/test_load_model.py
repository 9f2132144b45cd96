"""``gemdepth.load_model``: adapter choice, strictness, partial allow-lists, checkpoint layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import gemdepth
from gemdepth.models import PLUGINS
from gemdepth.models.plugins.base import PlugIn
from gemdepth.models.presets import resolve_model_config
from gemdepth.weights import CheckpointError, adapter_for
from official_helpers import rel_err

REPO = Path(__file__).resolve().parents[2]
DAV2_YAML = REPO / "tests" / "configs" / "official_mini_dav2.yaml"
VDA_YAML = REPO / "tests" / "configs" / "official_mini_vda.yaml"


class _Fresh(PlugIn):
    """A plug-in with its own weights and no effect, to test partial loading without GEM/ASTT."""

    def __init__(self, dim: int, head_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, feats):  # type: ignore[no-untyped-def]
        return feats


if "_test_fresh" not in PLUGINS:
    PLUGINS.register("_test_fresh")(_Fresh)


def test_adapter_is_chosen_from_the_keys(official_dir: Path) -> None:
    assert adapter_for(load_file(official_dir / "dav2_mini.safetensors")).name == "dav2"
    assert adapter_for(load_file(official_dir / "vda_mini.safetensors")).name == "vda"
    with pytest.raises(CheckpointError, match="unrecognised key layout"):
        adapter_for({"backbone.w": torch.zeros(1)})


def test_official_weights_need_a_config(official_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="carries no model config.*vda-vitl"):
        gemdepth.load_model(official_dir / "vda_mini.safetensors")


def test_checkpoint_of_another_architecture_lists_missing_keys(official_dir: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        gemdepth.load_model(official_dir / "dav2_mini.safetensors", VDA_YAML)
    msg = str(info.value)
    assert "dav2_mini.safetensors" in msg
    assert "model keys the checkpoint does not provide (112)" in msg  # 4 motion modules × 28 tensors
    assert "head.motion_modules.0.temporal_transformer" in msg


def test_checkpoint_of_another_size_lists_shape_mismatches(official_dir: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        gemdepth.load_model(official_dir / "vda_mini.safetensors", "vda-vits")
    msg = str(info.value)
    assert "shape mismatches (231)" in msg
    assert "norm.bias [64] → head.motion_modules.0.temporal_transformer.norm.bias expects [192]" in msg
    # ViT-S has 12 blocks, the mini 4: 8 blocks × 14 tensors are not in the file
    assert "model keys the checkpoint does not provide (112)" in msg and "encoder.blocks.4.norm1.weight" in msg


def test_partial_temporal_head_turns_dav2_into_an_equivalent_vda(official_dir: Path) -> None:
    """Fresh motion modules are the identity, so VDA with DAv2 weights reproduces DAv2's depth."""
    with pytest.raises(CheckpointError):
        gemdepth.load_model(official_dir / "dav2_mini.safetensors", VDA_YAML)
    model = gemdepth.load_model(official_dir / "dav2_mini.safetensors", VDA_YAML, partial="temporal-head")
    io = load_file(official_dir / "dav2_mini_io.safetensors")
    with torch.no_grad():
        depth = model(io["input"]).depth
    assert rel_err(depth.flatten(0, 1), io["depth"]) <= 1e-4


def test_partial_new_modules_lets_plugins_start_fresh(official_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {**resolve_model_config(VDA_YAML), "plugins": [{"name": "_test_fresh"}]}
    with pytest.raises(CheckpointError, match=r"model keys the checkpoint does not provide \(2\)[\s\S]*plugins\._test_fresh\.proj"):
        gemdepth.load_model(official_dir / "vda_mini.safetensors", config)
    with caplog.at_level(logging.WARNING, logger="gemdepth.weights"):
        model = gemdepth.load_model(official_dir / "vda_mini.safetensors", config, partial="new-modules")
    assert "2 tensors start fresh" in caplog.text and "plugins._test_fresh" in caplog.text
    io = load_file(official_dir / "vda_mini_io.safetensors")
    with torch.no_grad():
        assert rel_err(model(io["input"]).depth, io["depth"]) <= 1e-4
    with pytest.raises(ValueError, match="unknown partial allow-list 'everything'"):
        gemdepth.load_model(official_dir / "vda_mini.safetensors", config, partial="everything")


def test_lightning_ckpt_layout_needs_no_config(official_dir: Path, tmp_path: Path) -> None:
    ref_model = gemdepth.load_model(official_dir / "vda_mini.safetensors", VDA_YAML)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {f"model.{k}": v for k, v in ref_model.state_dict().items()}
        | {"loss_fn.weight": torch.ones(1)},
        "hyper_parameters": {"model": resolve_model_config(VDA_YAML), "lr": 1e-4},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
    }
    path = tmp_path / "run.ckpt"
    torch.save(ckpt, path)
    model = gemdepth.load_model(path)
    assert model.config == ref_model.config
    video = torch.randn(1, 2, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(model(video).depth, ref_model(video).depth, rtol=0, atol=0)


def test_plain_state_dict_of_ours_with_config(official_dir: Path, tmp_path: Path) -> None:
    ref_model = gemdepth.load_model(official_dir / "dav2_mini.safetensors", DAV2_YAML)
    save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, tmp_path / "ours.safetensors")
    model = gemdepth.load_model(tmp_path / "ours.safetensors", DAV2_YAML)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_vda_weights_into_gemdepth_vda_with_fresh_plugins(official_dir: Path) -> None:
    """The released recipe's starting point: VDA weights, GEM and ASTT initialised fresh."""
    gem_yaml = REPO / "tests" / "configs" / "official_mini_gemdepth.yaml"
    if not gem_yaml.exists():
        pytest.skip("official_mini_gemdepth.yaml is not in this checkout")
    with pytest.raises(CheckpointError, match=r"plugins\.gem\."):
        gemdepth.load_model(official_dir / "vda_mini.safetensors", gem_yaml)
    model = gemdepth.load_model(official_dir / "vda_mini.safetensors", gem_yaml, partial="new-modules")
    vda = load_file(official_dir / "vda_mini.safetensors")
    ours = model.state_dict()
    assert torch.equal(ours["encoder.blocks.3.mlp.fc2.weight"], vda["pretrained.blocks.3.mlp.fc2.weight"])
    assert torch.equal(ours["head.scratch.output_conv2.2.bias"], vda["head.scratch.output_conv2.2.bias"])
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 28, 42))
    assert out.depth.shape == (1, 2, 28, 42) and out.extrinsics.shape == (1, 2, 4, 4)
