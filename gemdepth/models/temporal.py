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

from gemdepth.models.chunking import (
    DEFAULT_MAX_MEMORY,
    MIN_TOKEN_ROWS,
    map_rows,
    release_between_slices,
    rows_per_chunk,
)
from gemdepth.models.cpu_linear import linear
from gemdepth.models.dpt import DPTHead, Features, Hook, _apply, _take

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
    """Multi-head self-attention along time, one sequence per spatial position.

    ``to_q``/``to_k``/``to_v`` keep the official parameter names; they run as one fused matmul
    (their weights concatenated), which gives the same numbers as three.
    """

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
        self.causal = False  # frame t attends to frames <= t (the online mode's offline reference)

    def forward(self, seq: Tensor) -> Tensor:
        """``seq`` ``(N, T, C)`` (N = batch × positions) → same; attention runs over T."""
        n, frames, dim = seq.shape
        seq = self.pos_encoder(seq)
        weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight], dim=0)
        q, k, v = linear(seq, weight).view(n, frames, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        out = out.transpose(1, 2).reshape(n, frames, dim)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """``a · gelu(b)`` with ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return value * F.gelu(gate)
        return F.gelu(gate).mul_(value)  # inference: the product in GELU's fresh output (same numbers, one 4C map less)


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

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(N, T, C)``, one time sequence per row."""
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = x + attn(norm(x))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    """GroupNorm → per-pixel linear in → transformer blocks → linear out, added to the input.

    After the GroupNorm (per frame) everything acts on one time sequence per spatial position,
    so the sequences run in slices of positions sized by ``max_memory`` (same numbers).
    """

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
        self.max_memory: int | None = DEFAULT_MAX_MEMORY

    def bytes_per_position(self, frames: int, element_size: int = 4) -> int:
        """Working memory of one position's sequence: the GEGLU's 8C-wide projection and its halves,
        the attention's 3C qkv and a few C-wide tensors, for T frames."""
        return element_size * frames * self.proj_in.in_features * 24

    def _sequences(self, seq: Tensor) -> Tensor:
        seq = self.proj_in(seq)
        for block in self.transformer_blocks:
            seq = block(seq)
        return self.proj_out(seq)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        bt, ch, h, w = x.shape
        batch, length = bt // frames, h * w
        chunk = rows_per_chunk(batch * length, self.bytes_per_position(frames, x.element_size()), self.max_memory,
                               max(1, MIN_TOKEN_ROWS // frames))
        if self.max_memory is not None and not torch.is_grad_enabled() and chunk < batch * length:
            return self._bounded(x, frames, max(1, chunk // batch))
        # (B·T, C, h, w) → (B·h·w, T, C): one time sequence per position
        seq = self.norm(x).view(batch, frames, ch, length).permute(0, 3, 1, 2).reshape(batch * length, frames, ch)
        seq = map_rows(self._sequences, batch * length, chunk, seq)
        return seq.view(batch, length, frames, ch).permute(0, 2, 3, 1).reshape(bt, ch, h, w) + x

    def _bounded(self, x: Tensor, frames: int, positions: int) -> Tensor:
        """Inference: ``positions`` positions' time sequences at a time, gathered from the normalised
        map and added straight into the output, so besides the input only the normalised map and
        the output exist at full size (the one-call path also holds the sequences before and after
        the transformer, and a reordered copy: five maps, 1.2 GB for ViT-L's level 3 over 32
        frames at 518×686). Same numbers: every sequence goes through the same layers."""
        bt, ch, h, w = x.shape
        batch, length = bt // frames, h * w
        release_between_slices(x, True, self.max_memory)  # the earlier stages' freed slices
        normed = self.norm(x).view(batch, frames, ch, length)
        out = torch.empty((batch, frames, ch, length), dtype=x.dtype, device=x.device)
        source = x.reshape(batch, frames, ch, length)
        for start in range(0, length, positions):
            cols = slice(start, min(length, start + positions))
            seq = normed[..., cols].permute(0, 3, 1, 2).reshape(-1, frames, ch)  # (B·p, T, C)
            seq = self._sequences(seq).view(batch, -1, frames, ch).permute(0, 2, 3, 1)  # (B, T, C, p)
            out[..., cols] = seq + source[..., cols]
            del seq
        return out.view(bt, ch, h, w)


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
    stack runs in float32 outside autocast, as the official head does, and its depth stays float32
    (the official rounds it back to the autocast dtype, which alone costs bf16's 4e-3). The ``"mid"`` hook sees
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
        metric: bool = False,
        max_depth: float | None = None,
    ) -> None:
        super().__init__(in_channels, features, out_channels, use_bn, use_clstoken, metric=metric, max_depth=max_depth)
        num_frames = 32 if num_frames is None else int(num_frames)
        if num_frames < 1:
            raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
        self.max_frames = num_frames
        c = list(out_channels)
        self.motion_modules = nn.ModuleList(
            [TemporalModule(ch, num_frames) for ch in (c[2], c[3], features, features)]
        )

    def skip_3(self, f3: tuple[Tensor, Tensor], patch_h: int, patch_w: int, frames: int = 1) -> Tensor:
        """Level 3 (index 2) → its motion module over the clip → ``layer3_rn`` (see :meth:`DPTHead.skip_3`)."""
        rows = f3[0].shape[0]
        low = self._chunk(rows, patch_h, patch_w, f3[0].dtype, full=False)
        if f3[0].dim() == 4:  # already projected: level 3's resize is the identity (no copy)
            layer_3 = self.level(2, *f3, patch_h, patch_w)
        else:
            layer_3 = self._map(lambda t, c: self.level(2, t, c, patch_h, patch_w), rows, low, *f3)
        layer_3 = self._whole(self.motion_modules[0], layer_3, frames)
        return self._map(self.scratch.layer3_rn, rows, low, layer_3)

    def output_convs(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            depth = self.scale_output(self.scratch.output_conv2(x.float()))
        return depth  # float32 (the official casts back to the autocast dtype: bf16 rounding, ≈4e-3)

    def forward(
        self,
        features: Features,
        patch_h: int,
        patch_w: int,
        frames: int = 1,
        hooks: Mapping[str, Hook] | None = None,
        release: bool = False,
    ) -> Tensor:
        """As :meth:`DPTHead.forward` (``release`` included), with the motion modules over ``frames``."""
        if frames > self.max_frames:
            raise ValueError(f"clip of {frames} frames is longer than the temporal head's num_frames={self.max_frames}")
        features = _take(features, release)
        rows = features[0][0].shape[0]
        low = self._chunk(rows, patch_h, patch_w, features[0][0].dtype, full=False)
        mm, s = self.motion_modules, self.scratch
        rn3 = features[2] if isinstance(features[2], Tensor) else self.skip_3(features[2], patch_h, patch_w, frames)
        layer_4 = self._map(lambda t, c: self.level(3, t, c, patch_h, patch_w), rows, low, *features[3])
        if release:
            features[2] = features[3] = None  # type: ignore[index]  # done with levels 3 and 4
        layer_4 = self._whole(mm[1], layer_4, frames)
        path_4 = self._map(lambda l4: s.refinenet4(s.layer4_rn(l4), size=(patch_h, patch_w)), rows, low, layer_4)
        del layer_4
        path_4 = _apply(hooks, "mid", self._whole(mm[2], path_4, frames))
        path_3 = self._map(lambda p, r: s.refinenet3(p, r, size=(2 * patch_h, 2 * patch_w)), rows, low, path_4, rn3)
        del path_4, rn3
        path_3 = self._whole(mm[3], path_3, frames)
        return self._finish(path_3, features, patch_h, patch_w, hooks)
