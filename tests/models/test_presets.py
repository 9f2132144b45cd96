"""Presets: the Python registry and configs/model/*.yaml agree; sizes match the released models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gemdepth.models import PLUGINS, build_model, get_preset, normalize_config, preset_names, resolve_model_config
from gemdepth.models.model import count_parameters, register_plugins
from gemdepth.models.presets import CONFIG_DIR, PRESETS

REPO = Path(__file__).resolve().parents[2]
BASE_PRESETS = ["dav2-vits", "dav2-vitb", "dav2-vitl", "vda-vits", "vda-vitb", "vda-vitl"]


def _needs_plugins(name: str) -> None:
    register_plugins()
    missing = [p["name"] for p in PRESETS[name]["plugins"] if p["name"] not in PLUGINS]
    if missing:
        pytest.skip(f"plug-ins {missing} are not available in this checkout")


def test_yaml_files_mirror_the_registry() -> None:
    assert CONFIG_DIR == REPO / "configs" / "model"
    files = {p.stem: p for p in CONFIG_DIR.glob("*.yaml")}
    assert set(files) == set(PRESETS)
    for name, path in files.items():
        assert yaml.safe_load(path.read_text()) == PRESETS[name], name


def test_expected_presets_exist() -> None:
    expected = set(BASE_PRESETS) | {"gemdepth-vda-vitl", "gemdepth-dav2-vitl", "gemdepth-vda-vits", "gemdepth-dav2-vits"}
    assert expected <= set(preset_names())
    released = get_preset("gemdepth-vda-vitl")
    assert released["host"] == "vda" and released["encoder"] == "vitl"
    assert [p["name"] for p in released["plugins"]] == ["gem", "astt"]


def test_get_preset_returns_a_copy() -> None:
    cfg = get_preset("vda-vits")
    cfg["head"]["features"] = 1
    assert PRESETS["vda-vits"]["head"]["features"] == 64


def test_resolve_accepts_name_yaml_and_dict(tmp_path: Path) -> None:
    assert resolve_model_config("vda-vits") == PRESETS["vda-vits"]
    assert resolve_model_config(CONFIG_DIR / "vda-vits.yaml") == PRESETS["vda-vits"]
    assert resolve_model_config(str(CONFIG_DIR / "vda-vits.yaml")) == PRESETS["vda-vits"]
    with pytest.raises(ValueError, match="neither a model preset"):
        resolve_model_config("vda-vitx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        resolve_model_config(bad)


@pytest.mark.parametrize("name", BASE_PRESETS)
def test_parameter_counts_match_released_models(name: str, official_dir: Path) -> None:
    """Our model = the official one minus the never-used tensors the adapters drop by name."""
    summary = json.loads((official_dir / "keys" / "summary.json").read_text())[f"{name}.txt"]
    kwargs = summary["constructor_kwargs"]
    cfg = normalize_config(PRESETS[name])
    assert cfg["head"]["features"] == kwargs["features"] and cfg["head"]["out_channels"] == kwargs["out_channels"]
    assert cfg["head"]["num_frames"] == kwargs.get("num_frames", 32)
    with torch.device("meta"):
        model = build_model(name)
    assert count_parameters(model) == summary["parameters"] - summary["unused_elements"]


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("gemdepth")])
def test_gemdepth_presets_normalise(name: str) -> None:
    _needs_plugins(name)
    cfg = normalize_config(PRESETS[name])
    assert [p["name"] for p in cfg["plugins"]] == ["gem", "astt"]


@pytest.mark.parametrize(("yaml_name", "fixture"), [("official_mini_dav2", "dav2_mini"), ("official_mini_vda", "vda_mini")])
def test_official_mini_yaml_matches_fixture(yaml_name: str, fixture: str, official_dir: Path) -> None:
    meta = json.loads((official_dir / f"{fixture}.json").read_text())
    cfg = normalize_config(resolve_model_config(REPO / "tests" / "configs" / f"{yaml_name}.yaml"))
    vit, ctor = meta["mini_config"]["vit"], meta["constructor"]
    assert cfg["host"] == meta["family"]
    assert cfg["encoder"] == {**vit, "mlp_ratio": float(vit["mlp_ratio"]), "layer_idx": meta["mini_config"]["layer_idx"]}
    assert cfg["head"]["features"] == ctor["features"] and cfg["head"]["out_channels"] == ctor["out_channels"]
    assert cfg["head"]["use_bn"] == ctor["use_bn"] and cfg["head"]["use_clstoken"] == ctor["use_clstoken"]
    assert cfg["head"]["num_frames"] == ctor.get("num_frames", 32)
