"""Every shipped strategy preset (``configs/strategy/*.yaml``) trains for real in 2 CPU
processes (gloo), layered over the stage-1 config and shrunk to the tiny model, and writes a
whole (unsharded) checkpoint that loads with ``weights_only=True``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import CONFIGS, _env, _write, tiny_overrides
from training_helpers import TINY_MODEL

STRATEGIES = sorted((CONFIGS / "strategy").glob("*.yaml"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from gemdepth.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("shards")
    common = dict(frames=8, clip_length=4, size=(56, 56), clips_per_shard=1, progress=False)
    make_synthetic_corpus(root / "synthetic", sequences=2, seed=0, **common)
    make_synthetic_corpus(root / "synthetic_val", sequences=1, seed=2, **common)
    return root


def test_strategy_presets_parse_to_their_strategy() -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    assert STRATEGIES, "configs/strategy/ holds no preset"
    for path in STRATEGIES:
        spec = yaml.safe_load(path.read_text())["trainer"]["strategy"]
        parser = ArgumentParser()
        parser.add_argument("--strategy", type=Strategy)
        strategy = parser.instantiate(parser.parse_object({"strategy": spec})).strategy
        module, name = spec["class_path"].rsplit(".", 1)
        assert type(strategy) is getattr(importlib.import_module(module), name)
        if spec["class_path"].endswith("ShardedStrategy"):
            names = {f"{c.__module__}.{c.__name__}" for c in strategy.shard_classes}
            assert names == set(spec["init_args"]["shard"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", STRATEGIES, ids=[p.stem for p in STRATEGIES])
def test_strategy_preset_trains_in_two_processes(tmp_path, shards, preset) -> None:
    run = tmp_path / "run"
    cfg = tiny_overrides(run, shards, 1, steps=2)
    cfg["trainer"].pop("strategy")  # the preset's
    cfg["trainer"]["val_check_interval"] = 1000
    cfg["data"]["batch_size"] = 1
    cmd = [sys.executable, "-m", "gemdepth", "fit", "-c", str(CONFIGS / "stage1.yaml"),
           "-c", str(preset), "-c", _write(tmp_path / "tiny.yaml", cfg),
           "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "MEMBER: 2/2" in res.stdout + res.stderr  # really two processes
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    # a whole checkpoint: every parameter at its full shape, as a 1-process model has it
    from gemdepth.models.model import build_model

    full = {f"model.{k}": v.shape for k, v in build_model(TINY_MODEL).state_dict().items()}
    assert {k: ckpt["state_dict"][k].shape for k in full} == full
