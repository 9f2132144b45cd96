"""2-D rotary position embedding (RoPE) as GemDepth's GEM and ASTT blocks use it.

The official code carries two implementations: VGGT's ``RotaryPositionEmbedding2D`` (GEM's
frame/global blocks) and CroCo's pure-PyTorch ``RoPE2D`` fallback (ASTT's spatial blocks,
``pos_embed="RoPE100"``). Read side by side they compute the same function, so one
implementation serves both:

* the head dimension ``D`` is split into two contiguous halves: the first rotates with the
  **y** (row) position, the second with the **x** (column) position;
* within each half of size ``D/2``, frequencies are ``base ** -(2i / (D/2))`` for
  ``i < D/4`` and the rotation is the non-interleaved "rotate-half" form
  ``t·cos + rot(t)·sin`` with ``rot([a, b]) = [-b, a]`` and angles repeated ``[θ, θ]``;
* ``base`` is 100 in both places (``RoPE100`` / ``frequency=100``).

Hand-written rather than taken from timm because timm's 2-D RoPE variants interleave or mix
axes differently and would not load the official weights faithfully. Angles are computed from
the positions directly (``pos · inv_freq``), which is the same float32 product as the
official cached-table lookup but needs no ``positions.max()`` host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grid_positions", "rope_cos_sin", "apply_rope", "table_rows"]


def grid_positions(
    height: int,
    width: int,
    num_special: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integer ``(y, x)`` positions ``(num_special + h·w, 2)`` of a row-major patch grid.

    Patch positions are shifted by +1 so that ``num_special`` leading special tokens
    (camera and register tokens) sit alone at ``(0, 0)``; the official code applies the same
    +1 shift to every patch grid, with or without special tokens.
    """
    ys = torch.arange(1, height + 1, device=device)
    xs = torch.arange(1, width + 1, device=device)
    grid = torch.cartesian_prod(ys, xs)
    if num_special:
        grid = torch.cat([grid.new_zeros(num_special, 2), grid], dim=0)
    return grid


def rope_cos_sin(
    positions: Tensor, head_dim: int, base: float = 100.0, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables ``(..., N, head_dim)`` for ``positions`` ``(..., N, 2)``.

    The layout is ``[y-half | x-half]``, each half ``[θ, θ]`` (see the module docstring).
    Computed in float32 and cast to ``dtype`` (default float32).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    angles = positions.float().unsqueeze(-1) * inv_freq  # (..., N, 2, half/2)
    angles = torch.cat([angles, angles], dim=-1).flatten(-2)  # (..., N, 2·half) = [y | x]
    dtype = dtype or torch.float32
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_quarters(x: Tensor) -> Tensor:
    """Rotate-half applied independently to the y-half and the x-half of the last dim."""
    a, b, c, d = x.chunk(4, dim=-1)
    return torch.cat([-b, a, -d, c], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys ``(B, heads, N, D)`` with tables ``(P, D)``.

    ``P == N``, or a table of one frame's ``P`` tokens for a sequence of ``N = k·P`` tokens made of
    ``k`` frames that carry the same positions (GEM's global block, ASTT's spatial block): the
    sequence is viewed as ``(…, k, P, D)`` against the one table, so no ``k``-fold repeated table
    exists (ViT-S, 32 frames at 518×686: 28 MiB for GEM's). Same elementwise products either way.
    """
    n, period = x.shape[-2], cos.shape[-2]
    if period == n or period == 1:
        return x * cos + _rotate_quarters(x) * sin
    if n % period:
        raise ValueError(f"a RoPE table of {period} rows does not tile a sequence of {n} tokens")
    frames = x.reshape(*x.shape[:-2], n // period, period, x.shape[-1])
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (…, 1, P, D): the same table for every frame
    return (frames * cos + _rotate_quarters(frames) * sin).reshape(x.shape)


def table_rows(table: Tensor, rows: slice | Tensor, length: int) -> Tensor:
    """Rows ``rows`` of a RoPE table for a sequence of ``length`` tokens (the table's own rows, or, for a
    one-frame table that tiles the sequence, the rows ``rows mod P``)."""
    period = table.shape[-2]
    if period == length:
        return table[..., rows, :]
    if length % period:
        raise ValueError(f"a RoPE table of {period} rows does not tile a sequence of {length} tokens")
    if isinstance(rows, slice):
        start, stop, step = rows.indices(length)
        rows = torch.arange(start, stop, step, device=table.device)
    return table.index_select(-2, rows.to(table.device) % period)
