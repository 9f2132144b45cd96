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


def test_one_frame_table_tiles_a_clip_like_the_repeated_table() -> None:
    """A clip of frames with the same positions rotates with one frame's table: the same numbers as
    the table repeated per frame (what GEM's global and ASTT's spatial blocks used to build), for
    whole sequences and for any rows of them; a table that does not tile the sequence is refused."""
    from gemdepth.models.plugins.rope import table_rows

    frames, pos = 5, grid_positions(3, 4, num_special=2)
    cos, sin = rope_cos_sin(pos, 16)
    big_cos, big_sin = cos.repeat(frames, 1), sin.repeat(frames, 1)
    n = frames * pos.shape[0]
    x = torch.randn(2, 3, n, 16)
    assert torch.equal(apply_rope(x, cos, sin), apply_rope(x, big_cos, big_sin))
    rows = torch.tensor([0, 13, 14, 57, n - 1])
    assert torch.equal(table_rows(cos, rows, n), big_cos[rows])
    assert torch.equal(table_rows(sin, slice(11, 40), n), big_sin[11:40])
    assert torch.equal(table_rows(big_cos, slice(11, 40), n), big_cos[11:40])  # a full table: its own rows
    with pytest.raises(ValueError, match="does not tile"):
        apply_rope(torch.randn(1, 1, n + 1, 16), cos, sin)
    with pytest.raises(ValueError, match="does not tile"):
        table_rows(cos, slice(0, 3), n + 1)
