"""``gemdepth convert``: official weights → self-describing checkpoint → load_model without config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import gemdepth
from gemdepth.cli import main as cli_main
from gemdepth.models import build_model, normalize_config
from gemdepth.models.presets import resolve_model_config
from gemdepth.weights.convert import main, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
VDA_YAML = REPO / "tests" / "configs" / "official_mini_vda.yaml"
DAV2_YAML = REPO / "tests" / "configs" / "official_mini_dav2.yaml"


def test_convert_round_trip(official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "out" / "vda_mini.safetensors"
    assert main([str(official_dir / "vda_mini.safetensors"), str(dst), "--model", str(VDA_YAML)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in dst.parent.iterdir()] == ["vda_mini.safetensors"]  # no temp file left behind
    with safe_open(str(dst), framework="pt") as f:
        embedded = json.loads(f.metadata()["gemdepth_config"])
    assert embedded == normalize_config(resolve_model_config(VDA_YAML))

    official = gemdepth.load_model(official_dir / "vda_mini.safetensors", VDA_YAML)
    converted = gemdepth.load_model(dst)  # no config needed
    video = torch.randn(1, 3, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(converted(video).depth, official(video).depth, rtol=0, atol=0)


def test_convert_through_the_cli_with_partial(
    official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "vda_from_dav2.safetensors"
    argv = ["convert", str(official_dir / "dav2_mini.safetensors"), str(dst), "--model", str(VDA_YAML)]
    assert cli_main(argv) == 1  # motion modules missing: a message, not a traceback
    first = capsys.readouterr().err.splitlines()[0]
    assert "dav2_mini.safetensors does not fit --model" in first and "--partial" in first
    assert not dst.exists()
    assert cli_main([*argv, "--partial", "temporal-head"]) == 0
    model = gemdepth.load_model(dst)
    assert model.config["host"] == "vda"


def test_save_checkpoint_uses_the_model_config(tmp_path: Path) -> None:
    model = build_model(DAV2_YAML)
    path = save_checkpoint(model, None, tmp_path / "m.safetensors")
    loaded = gemdepth.load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="written as .safetensors"):
        save_checkpoint(model, None, tmp_path / "m.pth")
