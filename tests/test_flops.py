"""FLOP counts that include attention whichever SDPA kernel torch dispatches to."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import gemdepth.flops as flops
from gemdepth.flops import AttentionCalls, measure_flops, sdpa_backward_flops, sdpa_forward_flops

SHAPES = [
    ((2, 3, 40, 8), (2, 3, 40, 8), (2, 3, 40, 8)),  # self-attention: the fused CPU kernel
    ((2, 3, 40, 8), (2, 3, 24, 8), (2, 3, 24, 16)),  # cross-attention, wider values
    ((5, 4, 16), (5, 9, 16), (5, 9, 16)),  # 3-D inputs
]


def _math_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Independent count: the math backend decomposes into ``bmm`` ops, which torch counts itself."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("shapes", SHAPES)
def test_attention_flops_match_torchs_own_matmul_count(shapes: tuple) -> None:
    q, k, v = (torch.randn(*s) for s in shapes)
    expected = _math_flops(q, k, v)
    assert expected > 0
    assert sdpa_forward_flops(q.shape, k.shape, v.shape) == expected
    with torch.no_grad():
        total, attention = measure_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert (total, attention) == (expected, expected)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # no double count when attention is plain bmm
        assert measure_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == (expected, expected)


def test_backward_formula_matches_torchs() -> None:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    q, k, v = (2, 3, 40, 8), (2, 3, 24, 8), (2, 3, 24, 16)
    assert sdpa_backward_flops(q, k, v) == sdpa_backward_flop_count((2, 3, 40, 16), q, k, v)


def test_a_kernel_without_any_formula_is_counted_from_the_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a torch whose fused kernel has no formula and is unknown to us: the total stays right."""
    q = torch.randn(2, 3, 40, 8)
    monkeypatch.setattr(flops, "sdpa_formulas", dict)
    with torch.no_grad(), FlopCounterMode(display=False) as bare:
        F.scaled_dot_product_attention(q, q, q)
    if bare.get_total_flops():
        pytest.skip("this torch counts its CPU SDPA kernel itself; nothing is left uncounted")
    with torch.no_grad():
        total, attention = measure_flops(lambda: F.scaled_dot_product_attention(q, q, q) * 2)
    expected = 4 * 2 * 3 * 40 * 40 * 8
    assert attention == expected and total == expected  # the elementwise * 2 counts 0, as in torch


def test_attention_calls_sees_keyword_arguments() -> None:
    q = torch.randn(1, 2, 6, 4)
    with AttentionCalls() as calls:
        F.scaled_dot_product_attention(query=q, key=q, value=q)
        torch.matmul(q, q.transpose(-1, -2))  # not attention
    assert calls.calls == 1 and calls.flops == 4 * 2 * 6 * 6 * 4
