"""Inference tests run their tiny tensors on one thread: on a shared 2-core machine, two OpenMP
threads spin-waiting on each other make millisecond ops take tens of milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
