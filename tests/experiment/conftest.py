"""Fixtures of the experiment tests (the miniature experiment file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_helpers import write_experiment


@pytest.fixture
def mini_experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path)
