"""Video Depth Anything's temporal DPT head: the DAv2 head plus four temporal motion modules.

The motion modules attend over time at every spatial position (sequence length T, one token per
frame) with a sinusoidal absolute position table ``pe`` ``(1, num_frames, C)`` added first. They
sit on ``layer_3`` and ``layer_4`` (the reassembled maps before ``layer3_rn``/``layer4_rn``) and on
``path_4`` and ``path_3``. Parameter names follow the official modules
(``motion_modules.i.temporal_transformer.{norm,proj_in,transformer_blocks.j.{attention_blocks,
norms,ff,ff_norm},proj_out}``) so the checkpoint adapter only strips a prefix. Attention goes
through :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gemdepth.models.dpt import DPTHead, Hook, _apply

MOTION_HEADS = 8
MOTION_GROUPS = 32


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """``(1, length, dim)``: sin on even channels, cos on odd ones, wavelengths up to 10000·2π."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class PositionalEncoding(nn.Module):
    """Adds the first T rows of a fixed sinusoidal table (a persistent buffer, as in the checkpoints)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(nn.Module):
    """Multi-head self-attention along time, per spatial position."""

    def __init__(self, dim: int, heads: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"motion-module width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """``x`` ``(B·T, L, C)`` → same; attention runs over T for each of the B·L positions."""
        bt, length, dim = x.shape
        batch = bt // frames
        seq = x.reshape(batch, frames, length, dim).transpose(1, 2).reshape(batch * length, frames, dim)
        seq = self.pos_encoder(seq)

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch * length, frames, self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(seq)), split(self.to_k(seq)), split(self.to_v(seq)))
        out = out.transpose(1, 2).reshape(batch * length, frames, dim)
        out = self.to_out[1](self.to_out[0](out))
        return out.reshape(batch, length, frames, dim).transpose(1, 2).reshape(bt, length, dim)


class GEGLU(nn.Module):
    """``a · gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4× wide (``net.0`` GEGLU, ``net.1`` dropout, ``net.2`` out projection)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TemporalTransformerBlock(nn.Module):
    """Pre-norm residual attention blocks (over time) followed by a pre-norm GEGLU FFN."""

    def __init__(self, dim: int, heads: int, max_len: int, num_attention_blocks: int = 2) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, max_len) for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = x + attn(norm(x), frames)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    """GroupNorm → per-pixel linear in → transformer blocks → linear out, added to the input."""

    def __init__(
        self, channels: int, heads: int, max_len: int, num_layers: int = 1, num_attention_blocks: int = 2
    ) -> None:
        super().__init__()
        if channels % MOTION_GROUPS:
            raise ValueError(f"motion-module channels {channels} must be divisible by {MOTION_GROUPS} (GroupNorm)")
        self.norm = nn.GroupNorm(MOTION_GROUPS, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, max_len, num_attention_blocks) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        bt, ch, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(bt, h * w, ch)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, frames)
        tokens = self.proj_out(tokens)
        return tokens.reshape(bt, h, w, ch).permute(0, 3, 1, 2) + x


class TemporalModule(nn.Module):
    """One motion module on a ``(B·T, C, h, w)`` map; starts as the identity (``proj_out`` zeroed)."""

    def __init__(self, channels: int, max_len: int, heads: int = MOTION_HEADS, zero_init: bool = True) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len)
        if zero_init:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        return self.temporal_transformer(x, frames)


class TemporalDPTHead(DPTHead):
    """Video Depth Anything's head: :class:`DPTHead` plus motion modules on layer 3/4, path 4/3.

    ``max_frames`` (= ``num_frames``) is the longest clip the ``pe`` tables cover. The last conv
    stack runs in float32 outside autocast, as the official head does. The ``"mid"`` hook sees
    ``path_4`` after its motion module (VDA's own place for temporal mixing), ``"late"`` sees
    ``path_1`` as in :class:`DPTHead`.
    """

    def __init__(
        self,
        in_channels: int,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        use_bn: bool = False,
        use_clstoken: bool = False,
        num_frames: int | None = 32,
    ) -> None:
        super().__init__(in_channels, features, out_channels, use_bn, use_clstoken)
        num_frames = 32 if num_frames is None else int(num_frames)
        if num_frames < 1:
            raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
        self.max_frames = num_frames
        c = list(out_channels)
        self.motion_modules = nn.ModuleList(
            [TemporalModule(ch, num_frames) for ch in (c[2], c[3], features, features)]
        )

    def output(self, path_1: Tensor, patch_h: int, patch_w: int) -> Tensor:
        out = self.scratch.output_conv1(path_1)
        out = F.interpolate(out, size=(patch_h * 14, patch_w * 14), mode="bilinear", align_corners=True)
        with torch.autocast(device_type=out.device.type, enabled=False):
            depth = self.scratch.output_conv2(out.float())
        return depth.to(out.dtype)

    def forward(
        self,
        features: Sequence[tuple[Tensor, Tensor]],
        patch_h: int,
        patch_w: int,
        frames: int = 1,
        hooks: Mapping[str, Hook] | None = None,
    ) -> Tensor:
        if frames > self.max_frames:
            raise ValueError(f"clip of {frames} frames is longer than the temporal head's num_frames={self.max_frames}")
        layer_1, layer_2, layer_3, layer_4 = self.reassemble(features, patch_h, patch_w)
        mm = self.motion_modules
        layer_3 = mm[0](layer_3, frames)
        layer_4 = mm[1](layer_4, frames)
        s = self.scratch
        rn1, rn2, rn3, rn4 = s.layer1_rn(layer_1), s.layer2_rn(layer_2), s.layer3_rn(layer_3), s.layer4_rn(layer_4)
        path_4 = mm[2](s.refinenet4(rn4, size=rn3.shape[2:]), frames)
        path_4 = _apply(hooks, "mid", path_4)
        path_3 = mm[3](s.refinenet3(path_4, rn3, size=rn2.shape[2:]), frames)
        path_2 = s.refinenet2(path_3, rn2, size=rn1.shape[2:])
        path_1 = _apply(hooks, "late", s.refinenet1(path_2, rn1))
        return self.output(path_1, patch_h, patch_w)
