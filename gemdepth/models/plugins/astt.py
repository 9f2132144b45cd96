"""ASTT, the Alternating Spatio-Temporal Transformer (paper §3.3).

Input preparation (early position, the paper's choice): ``dec_norm(tokens[3])`` plus a
1-D sin-cos embedding of the frame index (GEM, when present, has already added its pose
embedding, so this is the official ``LN(tokens + pose_embed) + idx_emb``). Then ``depth``
block pairs:

* **spatial** block over all tokens of all frames of a clip jointly, ``(B, T·L, C)``, with
  2-D RoPE (frequency 100) on the +1-shifted patch grid of each frame (every frame's tokens
  carry the same positions; time is told apart by the frame-index embedding);
* **time** block per patch location across frames, ``(B·L, T, C)``, without RoPE.

Heads as the official constructor derives them from ``num_heads``: spatial ``num_heads``,
time ``4·num_heads`` (ViT-L: 32 heads of 32 and 128 heads of 8). Dropout as the official
blocks: attention 0.1, projection/MLP 0.1, drop-path 0.1 in training; in eval all off unless
``stochastic_inference=True``, which keeps the attention dropout as the official forward
does.

Switches: ``spatial`` / ``temporal`` (Table 4), ``depth`` (block pairs), ``position``
``early|mid|late`` (Table 7). At ``mid`` (the head's ``path_4`` at the patch grid) and
``late`` (the last fused map, about 8× the patch grid) the plug-in works on
``head_features`` channels: a linear ``proj_in`` to ``dim`` and ``proj_out`` back (zero
initialised, so a freshly attached ASTT leaves a pretrained head unchanged) wrap the same
core, and the result is added to the map as a residual. At ``late`` the map is first average-
pooled by ``late_pool`` (8: back to the patch grid), which keeps the attention cost equal to
the early position, and the residual is upsampled bilinearly before the addition.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gemdepth.models.chunking import maybe_checkpoint, release_between_slices
from gemdepth.models.plugins.attention import Block
from gemdepth.models.plugins.base import PLUGIN_POSITIONS, PlugIn
from gemdepth.models.plugins.rope import grid_positions, rope_cos_sin
from gemdepth.models.registry import PLUGINS
from gemdepth.models.types import VideoFeatures

__all__ = ["ASTT", "frame_index_embedding"]


@lru_cache(maxsize=32)
def _frame_index_table(frames: int, dim: int) -> Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = torch.arange(frames, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def frame_index_embedding(frames: int, dim: int, device: torch.device | str | None = None
                          ) -> Tensor:
    """Sin-cos embedding ``(frames, dim)`` of frame indices ``0..frames-1``, float32.

    ``[sin(t·ω_i) | cos(t·ω_i)]`` with ``ω_i = 10000^(-i/(dim/2))``, computed in float64 and
    cast, as the official ``get_1d_sincos_pos_embed_from_grid`` (which the official model
    stores for 50 frames only; any length works here).
    """
    if dim % 2:
        raise ValueError(f"frame-index embedding needs an even width, got {dim}")
    return _frame_index_table(frames, dim).to(device=device, copy=True)  # never hand out the cache


@PLUGINS.register("astt")
class ASTT(PlugIn):
    """Alternating Spatio-Temporal Transformer; see the module docstring.

    Options (YAML keys): ``num_heads`` (official constructor value, default ``dim // 32``:
    spatial heads = ``num_heads``, time heads = ``4·num_heads``), ``depth`` (block pairs, 2),
    ``spatial`` / ``temporal`` (halves on/off, Table 4), ``position`` (``early`` | ``mid`` |
    ``late``, Table 7), ``attn_dropout`` / ``proj_dropout`` / ``drop_path`` (0.1 each, training
    only), ``late_pool`` (8), ``rope_frequency`` (100), ``stochastic_inference`` (False).
    """

    token_levels = (3,)  # at the early position, the last map only

    def __init__(
        self,
        dim: int,
        head_features: int | None = None,
        num_heads: int | None = None,
        depth: int = 2,
        spatial: bool = True,
        temporal: bool = True,
        position: str = "early",
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        drop_path: float = 0.1,
        rope_frequency: float = 100.0,
        late_pool: int = 8,
        stochastic_inference: bool = False,
    ) -> None:
        super().__init__()
        if position not in PLUGIN_POSITIONS:
            raise ValueError(f"ASTT position must be one of {PLUGIN_POSITIONS}, got {position!r}")
        if not (spatial or temporal):
            raise ValueError(
                "ASTT with both spatial and temporal halves off does nothing; "
                "remove it from the plug-in list instead"
            )
        if depth < 1:
            raise ValueError(f"ASTT depth must be >= 1, got {depth}")
        if position != "early" and head_features is None:
            raise ValueError(f"ASTT at position {position!r} needs head_features")
        num_heads = num_heads or max(1, dim // 32)
        self.position = position
        self.dim = dim
        self.spatial_head_dim = dim // num_heads
        self.rope_frequency = rope_frequency
        self.late_pool = late_pool

        def block(heads: int) -> Block:
            return Block(dim, heads, mlp_ratio=mlp_ratio, norm_eps=1e-6, attn_drop=attn_dropout,
                         proj_drop=proj_dropout, drop_path=drop_path)

        self.dec_norm = nn.LayerNorm(dim, eps=1e-6)
        self.spatial_blocks = nn.ModuleList([block(num_heads) for _ in range(depth)] if spatial
                                            else [])
        self.time_blocks = nn.ModuleList([block(4 * num_heads) for _ in range(depth)] if temporal
                                         else [])
        self.depth = depth
        if position != "early":
            assert head_features is not None
            self.proj_in = nn.Linear(head_features, dim)
            self.proj_out = nn.Linear(dim, head_features)
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)
        self.stochastic_inference = stochastic_inference
        self.checkpointing = False  # activation checkpointing of the block pairs (training)

    @property
    def stochastic_inference(self) -> bool:
        """Keep attention dropout active in eval (the official forward's behaviour)."""
        return self._stochastic

    @stochastic_inference.setter
    def stochastic_inference(self, value: bool) -> None:
        self._stochastic = bool(value)
        for blk in [*self.spatial_blocks, *self.time_blocks]:
            blk.attn.stochastic = self._stochastic

    # ------------------------------------------------------------------ core
    def prepare(self, tokens: Tensor, batch: int, frames: int) -> Tensor:
        """``dec_norm(tokens) + frame-index embedding`` as ``(B, T·L, C)``."""
        bt, length, c = tokens.shape
        if bt != batch * frames or c != self.dim:
            raise ValueError(
                f"ASTT expects tokens (B·T={batch * frames}, L, C={self.dim}), "
                f"got {tuple(tokens.shape)}"
            )
        emb = frame_index_embedding(frames, c, tokens.device).to(tokens.dtype)
        x = self.dec_norm(tokens)  # a fresh tensor (LayerNorm keeps no output for backward): add in place
        x.view(batch, frames, length, c).add_(emb[None, :, None, :])
        return x.view(batch, frames * length, c)

    def mix(self, x: Tensor | list[Tensor], batch: int, frames: int, grid_h: int, grid_w: int) -> Tensor:
        """Run the block pairs on prepared tokens ``(B, T·L, C)``; returns ``(B·T, L, C)``.

        ``x`` is consumed: in inference the time blocks write their output over it. Pass it inside
        a one-element list to hand it over entirely (the list is emptied), so that it is freed as
        soon as the first block has replaced it rather than when this call returns.
        """
        if isinstance(x, list):
            x = x.pop()
        length = grid_h * grid_w
        c = x.shape[-1]
        rope = None
        if len(self.spatial_blocks):
            pos = grid_positions(grid_h, grid_w, device=x.device)  # one frame's table: it tiles the clip
            rope = rope_cos_sin(pos, self.spatial_head_dim, self.rope_frequency)
        for i in range(self.depth):
            if len(self.spatial_blocks):
                x = maybe_checkpoint(self.checkpointing, self.spatial_blocks[i], x, rope)
            if len(self.time_blocks):
                block = self.time_blocks[i]
                if block.bounded_inference():
                    x = self._time_inplace(block, x, batch, frames, length)
                    continue
                x = x.view(batch, frames, length, c).transpose(1, 2).reshape(batch * length, frames, c)
                x = maybe_checkpoint(self.checkpointing, block, x)
                x = x.view(batch, length, frames, c).transpose(1, 2).reshape(batch, frames * length, c)
        return x.reshape(batch * frames, length, c)

    @staticmethod
    def _time_inplace(block: Block, x: Tensor, batch: int, frames: int, length: int) -> Tensor:
        """Inference: ``block`` on each patch's time sequence, a slice of patches at a time, gathered
        from ``x (B, T·L, C)`` and written back over it. The one-call path reorders the whole clip to
        ``(B·L, T, C)`` and back, which holds two more clip-sized copies (ViT-L, 32 frames at
        518×686: 238 MB each). Same slices as the block's own bounded path, so the same numbers."""
        c = x.shape[-1]
        grid = x.view(batch, frames, length, c)
        positions = max(1, block.sequences_per_chunk(batch * length, frames, x.element_size()) // batch)
        for start in range(0, length, positions):
            cols = slice(start, min(length, start + positions))
            if start == 0:  # large CPU maps: the last stage's holes go back to the OS
                release_between_slices(x, True, block.max_memory)
            seq = grid[:, :, cols].transpose(1, 2).reshape(-1, frames, c)  # (B·p, T, C)
            grid[:, :, cols] = block(seq).view(batch, -1, frames, c).transpose(1, 2)
            del seq
        return x

    # ------------------------------------------------------------------ plug-in API
    def forward(self, feats: VideoFeatures) -> VideoFeatures:
        """Early position: replace ``tokens[3]`` by its ASTT output."""
        if self.position != "early":
            raise RuntimeError(f"this ASTT sits at position {self.position!r}; call forward_map")
        prepared = [self.prepare(feats.tokens[3], feats.batch, feats.frames)]
        feats.tokens = list(feats.tokens)
        feats.tokens[3] = feats.cls[3]  # a placeholder while mixing: the input map is freed (memory)
        feats.tokens[3] = self.mix(prepared, feats.batch, feats.frames, feats.patch_h, feats.patch_w)
        return feats

    def forward_map(self, x: Tensor, batch: int, frames: int) -> Tensor:
        """Mid/late positions: residual ASTT on a head feature map ``(B·T, F, h, w)``."""
        if self.position == "early":
            raise RuntimeError("this ASTT sits at position 'early'; it acts on encoder tokens")
        bt, ch, height, width = x.shape
        if bt != batch * frames:
            raise ValueError(f"ASTT map has {bt} frames, expected B·T = {batch * frames}")
        y = x
        if self.position == "late" and self.late_pool > 1:
            grid = (max(1, round(height / self.late_pool)), max(1, round(width / self.late_pool)))
            y = F.adaptive_avg_pool2d(x, grid)
        gh, gw = y.shape[-2:]
        tokens = self.proj_in(y.flatten(2).transpose(1, 2))
        prepared = [self.prepare(tokens, batch, frames)]
        del tokens
        out = self.mix(prepared, batch, frames, gh, gw)
        out = self.proj_out(out).transpose(1, 2).reshape(bt, ch, gh, gw)
        if (gh, gw) != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return x + out
