"""Fixtures of the evaluation tests (helpers live in ``eval_helpers``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from eval_helpers import TINY_GEMDEPTH, OracleModel


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread avoids OpenMP spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def oracle() -> OracleModel:
    return OracleModel().eval()


@pytest.fixture
def tiny_gemdepth() -> nn.Module:
    from gemdepth.models import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY_GEMDEPTH)).eval()
    convs = [m for m in model.head.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 1]
    with torch.no_grad():
        convs[-1].bias.fill_(1.0)  # keep the final ReLU alive for a random model
    return model
