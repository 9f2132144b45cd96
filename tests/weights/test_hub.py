"""The model zoo: presets resolved from a Hugging Face Hub cache laid out on disk, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gemdepth
from gemdepth.cli import main as gemdepth_main
from gemdepth.inference import infer_video
from gemdepth.models import build_model, preset_names
from gemdepth.weights.hub import ZOO, WeightsNotCachedError, _licence_notice, cached_weights, resolve_weights
from official_helpers import official_key_state
from official_layout import official_state, place_in_hub_cache

PRESET = "vda-vits"


@pytest.fixture(scope="module")
def seeded() -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(PRESET).eval()
    with torch.no_grad():  # a positive output everywhere, so the depth comparison below is not all zeros
        model.head.scratch.output_conv2[2].bias.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, seeded: torch.nn.Module) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    w = ZOO[PRESET]
    place_in_hub_cache(cache, w.repo_id, w.filename, official_state(seeded, "vda"))
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def _frames(n: int = 6, h: int = 42, w: int = 56) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 2 * i, axis=1) for i in range(n)]


def _folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i:04d}.png")
    return path


def test_zoo_names_and_licences() -> None:
    assert set(ZOO) <= set(preset_names())
    for size, label in (("vits", "Small"), ("vitb", "Base"), ("vitl", "Large")):
        dav2, vda, metric = ZOO[f"dav2-{size}"], ZOO[f"vda-{size}"], ZOO[f"vda-{size}-metric"]
        assert (dav2.repo_id, dav2.filename) == (
            f"depth-anything/Depth-Anything-V2-{label}", f"depth_anything_v2_{size}.pth"
        )
        assert (vda.repo_id, vda.filename) == (
            f"depth-anything/Video-Depth-Anything-{label}", f"video_depth_anything_{size}.pth"
        )
        assert (metric.repo_id, metric.filename) == (
            f"depth-anything/Metric-Video-Depth-Anything-{label}", f"metric_video_depth_anything_{size}.pth"
        )
        assert dav2.non_commercial == vda.non_commercial == (size != "vits")
    gem = ZOO["gemdepth-vda-vitl"]
    assert (gem.repo_id, gem.filename) == ("YuechengLiu/GemDepth", "gemdepth.pth")
    assert ZOO["gemdepth-vda-vitl"].non_commercial
    notice = _licence_notice("vda-vitl", ZOO["vda-vitl"])
    assert "cc-by-nc-4.0" in notice and "NON-COMMERCIAL" in notice
    assert "NON-COMMERCIAL" not in _licence_notice("vda-vits", ZOO["vda-vits"])


def test_official_layout_helper_matches_the_released_inventory(official_dir: Path) -> None:
    with torch.device("meta"):
        model = build_model(PRESET)
    ours = {k: tuple(v.shape) for k, v in official_state(model, "vda").items()}
    released = {k: tuple(v.shape) for k, v in official_key_state(official_dir / "keys" / "vda-vits.txt").items()}
    assert ours == released


def test_load_model_by_preset_name_offline(offline: Path, seeded: torch.nn.Module) -> None:
    assert cached_weights(PRESET) is not None
    model = gemdepth.load_model(PRESET)
    theirs = seeded.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)


def test_infer_with_model_preset_and_no_ckpt(offline: Path, seeded: torch.nn.Module, tmp_path: Path) -> None:
    frames = _frames()
    folder = _folder(tmp_path / "clip", frames)
    out = tmp_path / "out"
    argv = ["infer", str(folder), "--model", PRESET, "--out", str(out), "--input-size", "28", "--no-progress",
            "--no-video", "--window", "5", "--overlap", "3", "--interp", "2"]
    assert gemdepth_main(argv) == 0
    run = json.loads((out / "clip" / "run.json").read_text())
    assert run["checkpoint"] == str(cached_weights(PRESET))
    assert run["hub"]["repo_id"] == ZOO[PRESET].repo_id and run["hub"]["filename"] == ZOO[PRESET].filename
    assert run["metric"] is False
    depth = np.load(out / "clip" / "depth.npz")["depth"].astype(np.float32)
    # the same seeded weights, run directly: the CLI used the cached file
    ref = np.stack([r.depth for r in infer_video(seeded, frames, input_size=28, window=5, overlap=3, interp=2)])
    assert depth.shape == ref.shape == (6, 42, 56)
    assert ref.max() > 0
    np.testing.assert_allclose(depth, ref, rtol=2e-3, atol=1e-3 * ref.max())


def test_missing_file_error_says_where_to_put_it(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "hub"
    shutil.copytree(offline, cache)
    w = ZOO[PRESET]
    for f in cache.rglob(w.filename):
        f.unlink()  # refs/main and the snapshot folder stay: only the file is gone
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    folder = _folder(tmp_path / "clip", _frames(2))
    code = gemdepth_main(["infer", str(folder), "--model", PRESET, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    repo_dir = cache / "models--depth-anything--Video-Depth-Anything-Small"
    for needle in (w.repo_id, w.filename, str(cache), f"{repo_dir}/snapshots/", f"{repo_dir}/refs/main",
                   "HF_HUB_OFFLINE", f"hf download {w.repo_id} {w.filename}", "--ckpt"):
        assert needle in err, needle
    with pytest.raises(WeightsNotCachedError, match="not in the Hub cache"):
        resolve_weights(PRESET)


def test_hand_placed_file_as_the_message_says(offline: Path, tmp_path: Path, seeded: torch.nn.Module) -> None:
    w = ZOO[PRESET]
    cache = tmp_path / "hub"
    repo = cache / "models--depth-anything--Video-Depth-Anything-Small"
    (repo / "snapshots" / "manual").mkdir(parents=True)
    (repo / "refs").mkdir()
    shutil.copy(cached_weights(PRESET), repo / "snapshots" / "manual" / w.filename)
    (repo / "refs" / "main").write_text("manual")
    assert resolve_weights(PRESET, cache_dir=cache) == repo / "snapshots" / "manual" / w.filename


def test_presets_without_weights_are_refused_clearly(offline: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path / "clip", _frames(2))
    code = gemdepth_main(["infer", str(folder), "--model", "gemdepth-vda-vits", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "'gemdepth-vda-vits' has no released weights" in capsys.readouterr().err
    with pytest.raises(KeyError, match="has no released weights"):
        resolve_weights("gemdepth-dav2-vits")


def test_models_command_lists_weights_and_cache_state(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gemdepth_main(["models", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(preset_names())
    assert rows[PRESET]["cached"] == str(cached_weights(PRESET))
    assert rows["vda-vitl"]["cached"] is None and rows["vda-vitl"]["licence"] == "cc-by-nc-4.0"
    assert rows["gemdepth-vda-vits"]["repo_id"] is None
    assert gemdepth_main(["models"]) == 0
    table = capsys.readouterr().out
    line = next(t for t in table.splitlines() if t.startswith(PRESET + " "))
    assert ZOO[PRESET].repo_id in line and ZOO[PRESET].filename in line and " yes " in line and "apache-2.0" in line
