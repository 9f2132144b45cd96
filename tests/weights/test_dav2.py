"""Depth Anything V2: parity with the official mini fixture and the released key layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gemdepth
from gemdepth.models import build_model
from gemdepth.weights.dav2 import dav2_adapter
from official_helpers import rel_err, official_key_state

REPO = Path(__file__).resolve().parents[2]
MINI_YAML = REPO / "tests" / "configs" / "official_mini_dav2.yaml"


def test_dav2_mini_parity(official_dir: Path) -> None:
    model = gemdepth.load_model(official_dir / "dav2_mini.safetensors", MINI_YAML)
    io = load_file(official_dir / "dav2_mini_io.safetensors")
    assert not model.training
    with torch.no_grad():
        out = model(io["input"])
        feats = model.encoder(io["input"].flatten(0, 1))
    ref = io["depth"]  # DAv2 returns (B·T, H, W) for the flattened clip
    assert out.depth.shape == (1, 8, 126, 224)
    assert rel_err(out.depth.flatten(0, 1), ref) <= 1e-4
    for i, (tokens, cls) in enumerate(feats):
        assert rel_err(tokens, io[f"enc_tokens_{i}"]) <= 1e-4, i
        assert rel_err(cls, io[f"enc_cls_{i}"]) <= 1e-4, i


@pytest.mark.parametrize("size", ["vits", "vitb", "vitl"])
def test_released_key_layout_maps_completely(size: str, official_dir: Path) -> None:
    state = official_key_state(official_dir / "keys" / f"dav2-{size}.txt")
    unused_expected = set(json.loads((official_dir / "keys" / "summary.json").read_text())[f"dav2-{size}.txt"]["unused_parameters"])
    with torch.device("meta"):
        model = build_model(f"dav2-{size}")
    target = {k: v.shape for k, v in model.state_dict().items()}
    result = dav2_adapter().adapt_report(state, target)
    assert set(result.state) == set(target)  # every model key provided, with the right shape
    assert set(result.unused) == unused_expected  # the rest is exactly the never-used tensors
    assert len(result.state) + len(result.unused) == len(state)


def test_vitg_swiglu_names_map_to_timm_and_compute_dinov2_swiglu() -> None:
    """ViT-g's DINOv2 ``mlp.w12``/``mlp.w3`` land in timm's ``fc1``/``fc2`` and mean the same thing."""
    enc = {"embed_dim": 48, "depth": 4, "num_heads": 2, "layer_idx": [0, 1, 2, 3], "ffn": "swiglu"}
    model = build_model({"host": "dav2", "encoder": enc, "head": {"features": 32, "out_channels": [8, 8, 16, 16]}})
    ours = model.state_dict()
    official = {}
    for k, v in ours.items():
        k = k.replace("encoder.", "pretrained.", 1).replace("head.", "depth_head.", 1)
        official[k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = torch.randn_like(v)
    official["pretrained.mask_token"] = torch.zeros(1, 48)
    adapted = dav2_adapter().adapt(official, {k: v.shape for k, v in ours.items()})
    model.load_state_dict(adapted)
    w12, b12 = official["pretrained.blocks.0.mlp.w12.weight"], official["pretrained.blocks.0.mlp.w12.bias"]
    w3, b3 = official["pretrained.blocks.0.mlp.w3.weight"], official["pretrained.blocks.0.mlp.w3.bias"]
    x = torch.randn(3, 48)
    x1, x2 = (x @ w12.T + b12).chunk(2, dim=-1)  # DINOv2 SwiGLUFFN.forward
    expected = (torch.nn.functional.silu(x1) * x2) @ w3.T + b3
    torch.testing.assert_close(model.encoder.blocks[0].mlp(x), expected)
