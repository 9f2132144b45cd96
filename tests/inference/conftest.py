"""Shared by the inference tests: one thread for their tiny tensors (on a shared 2-core machine,
two OpenMP threads spin-waiting on each other make millisecond ops take tens of milliseconds),
and a self-describing checkpoint of the official mini GemDepth config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

MINI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "official_mini_gemdepth.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mini_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted (self-describing) checkpoint of the mini GemDepth, random weights."""
    from gemdepth.models import build_model
    from gemdepth.weights.convert import save_checkpoint

    config = yaml.safe_load(MINI_CONFIG.read_text())
    torch.manual_seed(0)  # the same weights whichever tests ran first (some seeds predict all zeros)
    path = tmp_path_factory.mktemp("ckpt") / "mini.safetensors"
    save_checkpoint(build_model(config).eval(), config, path)
    return path
