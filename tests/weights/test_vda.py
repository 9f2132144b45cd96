"""Video Depth Anything: parity with the official mini fixture and the released key layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gemdepth
from gemdepth.models import build_model
from gemdepth.models.temporal import sinusoidal_table
from gemdepth.weights.vda import vda_adapter
from official_helpers import rel_err, official_key_state

REPO = Path(__file__).resolve().parents[2]
MINI_YAML = REPO / "tests" / "configs" / "official_mini_vda.yaml"


def test_vda_mini_parity(official_dir: Path) -> None:
    model = gemdepth.load_model(official_dir / "vda_mini.safetensors", MINI_YAML)
    io = load_file(official_dir / "vda_mini_io.safetensors")
    with torch.no_grad():
        out = model(io["input"])
        feats = model.encoder(io["input"].flatten(0, 1))
    assert out.depth.shape == io["depth"].shape == (1, 8, 126, 224)
    assert rel_err(out.depth, io["depth"]) <= 1e-4
    for i, (tokens, cls) in enumerate(feats):
        assert rel_err(tokens, io[f"enc_tokens_{i}"]) <= 1e-4, i
        assert rel_err(cls, io[f"enc_cls_{i}"]) <= 1e-4, i


def test_official_pe_buffers_equal_our_table(official_dir: Path) -> None:
    sd = load_file(official_dir / "vda_mini.safetensors")
    pes = {k: v for k, v in sd.items() if k.endswith("pos_encoder.pe")}
    assert len(pes) == 8
    for value in pes.values():
        torch.testing.assert_close(value, sinusoidal_table(value.shape[1], value.shape[2]))


@pytest.mark.parametrize("size", ["vits", "vitb", "vitl"])
def test_released_key_layout_maps_completely(size: str, official_dir: Path) -> None:
    state = official_key_state(official_dir / "keys" / f"vda-{size}.txt")
    summary = json.loads((official_dir / "keys" / "summary.json").read_text())[f"vda-{size}.txt"]
    with torch.device("meta"):
        model = build_model(f"vda-{size}")
    target = {k: v.shape for k, v in model.state_dict().items()}
    result = vda_adapter().adapt_report(state, target)
    assert set(result.state) == set(target)
    assert set(result.unused) == set(summary["unused_parameters"])
    assert len(result.state) + len(result.unused) == len(state)
    mapped_pe = [k for k in result.state if k.endswith("pos_encoder.pe")]
    assert sorted(mapped_pe) == sorted(k for k in summary["buffers_in_state_dict"])
