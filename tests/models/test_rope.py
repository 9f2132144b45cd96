"""2-D RoPE: layout against an independent complex-number formulation, positions, properties."""

from __future__ import annotations

import pytest
import torch

from gemdepth.models.plugins.rope import apply_rope, grid_positions, rope_cos_sin


def _reference_rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Official 2-D RoPE written as complex rotations, in float64.

    Per half (y, then x) of the head dim, feature pairs ``(j, j + D/4)`` rotate by
    ``pos · base^(-2j / (D/2))``.
    """
    d = x.shape[-1]
    half, quarter = d // 2, d // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) * 2 / half)
    out = []
    for axis in range(2):
        part = x[..., axis * half : (axis + 1) * half].double()
        z = torch.complex(part[..., :quarter], part[..., quarter:])
        theta = pos[:, axis, None].double() * freqs
        z = z * torch.polar(torch.ones_like(theta), theta)
        out += [z.real, z.imag]
    y_re, y_im, x_re, x_im = out
    return torch.cat([y_re, y_im, x_re, x_im], dim=-1)


@pytest.mark.parametrize("head_dim", [8, 16, 32])
def test_rope_matches_complex_rotation(head_dim: int) -> None:
    pos = grid_positions(3, 5, num_special=2)
    x = torch.randn(2, 3, pos.shape[0], head_dim)
    cos, sin = rope_cos_sin(pos, head_dim, base=100.0)
    ours = apply_rope(x, cos, sin)
    ref = _reference_rope(x, pos, 100.0)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5)


def test_grid_positions_shift_and_special_tokens() -> None:
    pos = grid_positions(2, 3, num_special=3)
    assert pos.shape == (3 + 6, 2)
    assert pos[:3].eq(0).all()
    # row-major (y, x), both starting at 1
    assert pos[3:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]


def test_rope_scores_depend_on_offset_only() -> None:
    head_dim = 16
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(pq: list[int], pk: list[int]) -> float:
        cq, sq = rope_cos_sin(torch.tensor([pq]), head_dim)
        ck, sk = rope_cos_sin(torch.tensor([pk]), head_dim)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score([2, 3], [5, 1]) == pytest.approx(score([7, 10], [10, 8]), abs=1e-4)
    assert score([2, 3], [5, 1]) != pytest.approx(score([2, 3], [1, 5]), abs=1e-3)


def test_rope_rejects_head_dim_not_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_cos_sin(grid_positions(2, 2), 6)
