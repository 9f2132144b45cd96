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
Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` with the
default scale ``head_dim ** -0.5`` (what the official passes explicitly).
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import Tensor, nn

from gemdepth.models.plugins.rope import apply_rope

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

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: Tensor, rope: RopeTables | None = None, query_rows: Tensor | None = None
    ) -> Tensor:
        """Attend ``x`` ``(B, N, C)`` to itself.

        ``rope`` holds cos/sin tables ``(N, head_dim)`` (or broadcastable). ``query_rows``
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
            kv = F.linear(x, w[dim:], None if bias is None else bias[dim:])
            k, v = kv.view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q = self._heads(F.linear(x[:, query_rows], w[:dim], None if bias is None else bias[:dim]))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            k = apply_rope(k, cos, sin)
            if query_rows is not None:
                cos, sin = cos[..., query_rows, :], sin[..., query_rows, :]
            q = apply_rope(q, cos, sin)
        dropout_p = self.attn_drop if (self.training or self.stochastic) else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
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

    def forward(
        self, x: Tensor, rope: RopeTables | None = None, query_rows: Tensor | None = None
    ) -> Tensor:
        """Apply the block; with ``query_rows`` only those rows are computed and returned."""
        residual = x if query_rows is None else x[:, query_rows]
        x = residual + self.drop_path(self.ls1(self.attn(self.norm1(x), rope, query_rows)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
