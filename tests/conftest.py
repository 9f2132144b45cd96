"""Shared test fixtures: where ``../shared`` is, and tiny deterministic inputs."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads must not spin: on 2 shared cores spinning made tiny ops many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("GEMDEPTH_SHARED", REPO_ROOT.parent / "shared"))
OFFICIAL_DIR = SHARED_DIR / "fixtures" / "official"
REAL_DIR = SHARED_DIR / "fixtures" / "real"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"{path} is missing: these tests need the project's shared fixtures beside the "
            f"clone (../shared) or GEMDEPTH_SHARED pointing at them"
        )
    return path


@pytest.fixture
def official_dir() -> Path:
    """``../shared/fixtures/official`` (skips the test where a clone lacks it)."""
    return _require(OFFICIAL_DIR)


@pytest.fixture
def real_dir() -> Path:
    """``../shared/fixtures/real`` (skips the test where a clone lacks it)."""
    return _require(REAL_DIR)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
