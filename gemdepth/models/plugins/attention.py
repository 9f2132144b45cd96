"""Transformer blocks of GEM, the camera head and ASTT (pre-norm ViT blocks with SDPA).

One block class covers the three official variants by switches; parameter names follow the
official checkpoints (``norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, ls1.gamma,
norm2, mlp.fc1, mlp.fc2, ls2.gamma``) so the weight adapter is a prefix rename:

=================  ===========  =========  ============  ==========  =====================
official block     LayerNorm    qk-norm    LayerScale    RoPE        dropout / drop-path
=================  ===========  =========  ============  ==========  =====================
GEM frame/global   eps 1e-5     yes (1e-5) init 0.01     2-D, 100    none
camera-head trunk  eps 1e-5     no         init 0.01     none        none
ASTT spatial       eps 1e-6     no         none          2-D, 100    0.1 / 0.1 / 0.1
ASTT time          eps 1e-6     no         none          none        0.1 / 0.1 / 0.1
=================  ===========  =========  ============  ==========  =====================

(The VGGT blocks are built without a ``norm_layer`` argument, so they get PyTorch's default
LayerNorm eps 1e-5; the ASTT blocks get the model's ``partial(LayerNorm, eps=1e-6)``.)

The MLP, LayerScale and DropPath are timm's (numerically identical to the official ones).

Memory: in inference (eval, no autograd) a block bounds its working memory by ``max_memory``:
independent sequences (dim 0) run in slices, one long sequence computes its keys/values once and
its queries in slices (each query row's softmax only needs all keys), in groups of heads when all
heads' keys and values would not fit half the budget, and the MLP runs in slices of tokens — all
row- and head-wise, so the numbers equal the one-call forward.
Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` with the
default scale ``head_dim ** -0.5`` (what the official passes explicitly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import Tensor, nn

from gemdepth.models.chunking import (
    DEFAULT_MAX_MEMORY,
    MIN_TOKEN_ROWS,
    map_rows,
    release_between_slices,
    release_free_heap,
    rows_per_chunk,
)
from gemdepth.models.cpu_linear import linear
from gemdepth.models.plugins.rope import apply_rope, table_rows

__all__ = ["Attention", "Block"]

RopeTables = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm and 2-D RoPE, through SDPA.

    ``attn_drop`` is the attention-probability dropout. It is applied in training, and in
    eval only when ``stochastic`` is set (the official ASTT passes ``dropout_p=0.1`` to SDPA
    regardless of the mode; :class:`~gemdepth.models.plugins.astt.ASTT` exposes that as
    ``stochastic_inference``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_drop = attn_drop
        self.stochastic = False
        # frames F of a (B, F·S, C) clip: token i attends to tokens of frames <= its own (online reference)
        self.causal_frames: int | None = None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def bounded(self, x: Tensor, norm: nn.Module, scale: nn.Module, rope: RopeTables | None, chunk: int,
                query_rows: Tensor | None = None, group: int | None = None) -> Tensor:
        """``x + scale(attn(norm(x)))`` for all rows (or ``query_rows``), ``chunk`` rows at a time (inference).

        Heads run in groups of ``group`` (default: all at once): for each group, keys and values of
        every row are built slice by slice into ``(B, group, N, D)`` buffers and each query slice
        attends to them, writing its heads' columns of one ``(B, N, C)`` output; the projection and
        the residual then go into that same buffer, slice by slice. So at most one group's keys and
        values exist at a time (a clip-wide attention of ViT-L over 32 frames keeps 2·N·C floats of
        keys and values otherwise), and no full-size normalised input, qkv or RoPE temporaries
        exist at all. Row- and head-wise, so the numbers equal the one-call forward.
        """
        b, n, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        group = heads if group is None else max(1, min(heads, int(group)))
        w, bias = self.qkv.weight, self.qkv.bias
        cos = sin = None
        if rope is not None:
            cos, sin = rope[0].to(x.dtype), rope[1].to(x.dtype)
        out_rows = n if query_rows is None else int(query_rows.numel())
        out = x.new_empty((b, out_rows, dim))
        for first in range(0, heads, group):
            if first:  # large CPU maps: the last group's keys/values go back to the OS
                release_free_heap(x)
            g = min(heads, first + group) - first
            cols = slice(first * head_dim, (first + g) * head_dim)
            if g == heads:  # one group: the contiguous key/value rows of the qkv weight
                w_kv = w[dim:]
                b_kv = None if bias is None else bias[dim:]
            else:
                w_kv = torch.cat((w[dim:2 * dim][cols], w[2 * dim:][cols]))
                b_kv = None if bias is None else torch.cat((bias[dim:2 * dim][cols], bias[2 * dim:][cols]))
            w_q, b_q = w[:dim][cols], None if bias is None else bias[:dim][cols]
            k, v = x.new_empty((b, g, n, head_dim)), x.new_empty((b, g, n, head_dim))
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                kv = linear(norm(x[:, rows]), w_kv, b_kv)
                ks, vs = kv.view(b, -1, 2, g, head_dim).permute(2, 0, 3, 1, 4)
                ks = self.k_norm(ks)
                if cos is not None and sin is not None:
                    ks = apply_rope(ks, table_rows(cos, rows, n), table_rows(sin, rows, n))
                k[:, :, rows], v[:, :, rows] = ks, vs
                del kv, ks, vs
            blocks = [query_rows] if query_rows is not None else [
                slice(s, min(n, s + chunk)) for s in range(0, n, chunk)]
            written = 0
            for rows in blocks:
                q = linear(norm(x[:, rows]), w_q, b_q)
                q = self.q_norm(q.view(b, -1, g, head_dim).transpose(1, 2))
                if cos is not None and sin is not None:
                    q = apply_rope(q, table_rows(cos, rows, n), table_rows(sin, rows, n))
                o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, g * head_dim)
                out[:, written:written + o.shape[1], cols] = o
                written += o.shape[1]
                del q, o
            del k, v
        for start in range(0, out_rows, chunk):
            rows = slice(start, min(out_rows, start + chunk))
            residual = x[:, rows] if query_rows is None else x[:, query_rows[rows]]
            out[:, rows] = residual + scale(self.proj(out[:, rows]))
        return out

    def forward(
        self, x: Tensor, rope: RopeTables | None = None, query_rows: Tensor | None = None
    ) -> Tensor:
        """Attend ``x`` ``(B, N, C)`` to itself.

        ``rope`` holds cos/sin tables ``(N, head_dim)``, or one frame's ``(P, head_dim)`` when the
        sequence is ``N / P`` frames with the same positions (see :func:`apply_rope`). ``query_rows``
        (1-D index tensor) computes the output for those rows only, against all keys: the
        exact same numbers as the full attention at those rows, at a fraction of the cost
        when only a few outputs are used (GEM's global block feeds only camera tokens on).
        """
        b, n, c = x.shape
        dim = c
        if query_rows is None:
            q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(
                2, 0, 3, 1, 4
            )
        else:
            w, bias = self.qkv.weight, self.qkv.bias
            kv = linear(x, w[dim:], None if bias is None else bias[dim:])
            k, v = kv.view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q = self._heads(linear(x[:, query_rows], w[:dim], None if bias is None else bias[:dim]))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            k = apply_rope(k, cos, sin)
            if query_rows is not None:
                if cos.shape[-2] != n:  # one frame's table: tile it (exports and traces take no row arithmetic)
                    cos, sin = cos.repeat(n // cos.shape[-2], 1), sin.repeat(n // sin.shape[-2], 1)
                cos, sin = cos[..., query_rows, :], sin[..., query_rows, :]
            q = apply_rope(q, cos, sin)
        dropout_p = self.attn_drop if (self.training or self.stochastic) else 0.0
        mask = None
        if self.causal_frames:
            frame = torch.arange(n, device=x.device) // (n // self.causal_frames)
            mask = (frame if query_rows is None else frame[query_rows])[:, None] >= frame[None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(b, q.shape[2], dim)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block ``x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        norm_eps: float = 1e-5,
        qk_norm_eps: float = 1e-5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            qk_norm=qk_norm,
            norm_eps=qk_norm_eps,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.max_memory: int | None = DEFAULT_MAX_MEMORY

    def _token_bytes(self, element_size: int) -> tuple[int, int]:
        """Working bytes per token of the attention part (qkv, output, projection) and of the MLP."""
        dim, hidden = self.norm1.normalized_shape[0], self.mlp.fc1.out_features
        return element_size * 8 * dim, element_size * (3 * dim + 2 * hidden)

    def _bounded(self, x: Tensor, rope: RopeTables | None, query_rows: Tensor | None, first_of_slices: bool = False
                 ) -> Tensor:
        """Inference forward of one slice of sequences (``first_of_slices``: the first of several):
        attention in query/key slices, then the MLP residual added in place, slice by slice, into the
        attention output (a fresh tensor)."""
        b, n, c = x.shape
        attn_bytes, mlp_bytes = self._token_bytes(x.element_size())
        chunk = rows_per_chunk(n, b * attn_bytes, self.max_memory, MIN_TOKEN_ROWS)
        kv_bytes_per_head = 2 * b * n * self.attn.head_dim * x.element_size()
        # keys/values of a head group take half the budget, the query slices' temporaries the rest
        kv_budget = None if self.max_memory is None else max(1, self.max_memory // 2)
        group = rows_per_chunk(self.attn.num_heads, kv_bytes_per_head, kv_budget)
        size = x.numel() * x.element_size()
        release_between_slices(x, first_of_slices, self.max_memory)  # large CPU maps: the last stage's holes
        x = self.attn.bounded(x, self.norm1, self.ls1, rope, chunk, query_rows, group)
        release_free_heap(x, nbytes=size)  # the attention's freed key/value and query slices
        flat = x.contiguous().view(-1, c)  # a fresh tensor: the MLP residual goes in place
        rows = flat.shape[0]
        chunk = rows_per_chunk(rows, mlp_bytes, self.max_memory, MIN_TOKEN_ROWS)
        for start in range(0, rows, chunk):
            t = flat[start:start + chunk]
            t.add_(self.ls2(self.mlp(self.norm2(t))))
        return flat.view(x.shape)

    def bounded_inference(self) -> bool:
        """Whether a call now takes the memory-bounded inference path (a budget, eval, no autograd)."""
        stochastic = self.attn.stochastic and self.attn.attn_drop > 0
        return self.max_memory is not None and not (self.training or stochastic or torch.is_grad_enabled())

    def sequences_per_chunk(self, sequences: int, length: int, element_size: int = 4) -> int:
        """How many independent sequences of ``length`` tokens one bounded slice takes."""
        attn_bytes, mlp_bytes = self._token_bytes(element_size)
        return rows_per_chunk(sequences, length * max(attn_bytes, mlp_bytes), self.max_memory)

    def forward_inplace(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        """Inference on independent sequences ``(B, N, C)``: each slice of sequences is written back
        over its input, so no second ``(B, N, C)`` tensor exists (the caller hands ``x`` over).
        Same numbers as :meth:`forward`; without the bounded path it is ``forward``."""
        if not self.bounded_inference():
            return self(x, rope)
        b, n, _ = x.shape
        chunk = self.sequences_per_chunk(b, n, x.element_size())
        for start in range(0, b, chunk):
            rows = slice(start, min(b, start + chunk))
            x[rows] = self._bounded(x[rows], rope, None, first_of_slices=start == 0 and chunk < b)
        return x

    def forward(
        self, x: Tensor, rope: RopeTables | None = None, query_rows: Tensor | None = None
    ) -> Tensor:
        """Apply the block; with ``query_rows`` only those rows are computed and returned."""
        if self.bounded_inference():
            b, n, _ = x.shape
            chunk = self.sequences_per_chunk(b, n, x.element_size())
            if query_rows is None and chunk < b:
                starts = iter([True])  # the first slice starts the stage
                return map_rows(lambda t: self._bounded(t, rope, None, next(starts, False)), b, chunk, x)
            return self._bounded(x, rope, query_rows)
        residual = x if query_rows is None else x[:, query_rows]
        x = residual + self.drop_path(self.ls1(self.attn(self.norm1(x), rope, query_rows)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
