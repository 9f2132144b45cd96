"""Online (streaming) inference: one frame in, its depth (and camera) out, constant cost per frame.

:func:`stream` wraps a :class:`~gemdepth.models.VideoDepthModel` (any host, any plug-ins) in a
:class:`Stream` whose :meth:`Stream.step` takes one frame and returns its :class:`FrameResult`
before the next frame is read. Per frame the work is one encoder pass, the per-frame layers of
the head on the new frame only, and attention of the new frame's queries over a bounded cache
of keys/values of the past:

* **What is cached.** Every attention that mixes frames keeps, per layer, the keys and values
  of the frames in the window: VDA's motion modules (per spatial position, 2 attentions per
  module), GEM's global blocks and every camera-head trunk block of every refinement iteration,
  ASTT's spatial and time blocks. Nothing else is kept but GEM's anchor pose and one distance
  per window frame (its translation norm factor) and the previous output depth (alignment).
* **The window.** ``window`` frames (default: the model's training window, ``num_frames``):
  frame 0 of the stream is kept for ever in slot 0, the anchor (GEM's reference camera: its
  slot-0 camera/register tokens make it the frame the poses are relative to; Video Depth
  Anything's own streaming mode also keeps its first frames), and the newest ``window - 1``
  frames rotate through the other slots of preallocated buffers (a ring), so memory and cost
  per frame are constant in the length of the stream.
* **Semantics.** Frame ``t`` attends to the window's frames and itself, each cached frame's
  keys/values as computed when it arrived: for a stream of at most ``window`` frames this is
  exactly the offline model with a causal (frame-level) attention mask, which
  :func:`causal_reference` builds from the unmodified modules (the tests compare them). VDA's
  motion modules add their sinusoidal position table *before* the key/value projections, which
  are linear, so the cache holds position-free keys/values and adds the projected table at each
  frame's current place in the window (``k = W_k x + W_k pe[slot]``): once the ring turns, the
  window is laid out as an offline window (anchor at 0, newest last), as VDA's streaming mode
  does by re-adding the table to its cached hidden states. ASTT's frame-index embedding enters
  through a LayerNorm, so its cached keys keep the index they arrived with (the newest frame
  always gets index ``min(t, window - 1)``). GEM's pose feeding uses the translation norm factor
  of the frames in the window.
* **Alignment.** Each frame's relative disparity is fitted to the previous output frame by the
  least-squares ``(scale, shift)`` of the offline windowing (:func:`gemdepth.geometry.fit_scale_shift`
  on all pixels, in float64, result clamped at 0), so the stream has no jumps; metric models are
  not re-fitted, as offline. ``align=False`` returns the network's raw output.

All tensor work runs under :func:`torch.inference_mode`; attention goes through
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gemdepth.atomic import atomic_write_text
from gemdepth.geometry import fit_scale_shift, pose_encoding_to_cameras
from gemdepth.inference.preprocess import (
    network_size,
    preprocess_frames,
    upsample_depth,
)
from gemdepth.inference.windowing import FrameResult, check_frame
from gemdepth.models.cpu_linear import linear
from gemdepth.models.encoder import PATCH_SIZE
from gemdepth.models.plugins.astt import ASTT, frame_index_embedding
from gemdepth.models.plugins.attention import Block
from gemdepth.models.plugins.camera_head import activate_pose
from gemdepth.models.plugins.gem import GEM, relative_to_first_frame
from gemdepth.models.plugins.rope import apply_rope, grid_positions, rope_cos_sin

__all__ = [
    "FrameRing",
    "LayerCache",
    "OnlineModel",
    "StepOutput",
    "Stream",
    "causal_reference",
    "latency_summary",
    "stream",
    "write_latency_log",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- caches
class FrameRing:
    """Slot bookkeeping shared by every cache of a stream: slot 0 holds frame 0 (the anchor) for
    ever, slots ``1..capacity-1`` a ring of the newest frames."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"the online window must hold at least 2 frames (anchor + newest), got {capacity}")
        self.capacity = int(capacity)
        self.count = 0  # frames seen

    def reset(self) -> None:
        self.count = 0

    @property
    def slot(self) -> int:
        """The slot of the frame being processed (call :meth:`advance` after the step)."""
        t = self.count
        return t if t < self.capacity else 1 + (t - 1) % (self.capacity - 1)

    @property
    def filled(self) -> int:
        """Slots in use once the current frame is written."""
        return min(self.count + 1, self.capacity)

    @property
    def position(self) -> int:
        """The current frame's place in the window (0 = anchor, newest last)."""
        return self.filled - 1

    def positions(self) -> list[int]:
        """Window place of each used slot ``0..filled-1`` (identity until the ring turns)."""
        n = self.filled
        if self.count < self.capacity:
            return list(range(n))
        ring = self.capacity - 1
        newest = self.slot - 1
        return [0] + [1 + (r - newest - 1) % ring for r in range(ring)]

    def advance(self) -> None:
        self.count += 1


class LayerCache:
    """Keys and values of one attention layer for the window's frames: ``(N, heads, capacity, S, D)``
    buffers (``S`` tokens per frame), allocated on the first write and overwritten in place."""

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def reset(self) -> None:
        self.k = self.v = None

    def write(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the current frame's ``k, v`` ``(N, heads, S, D)``; return the window's
        ``(N, heads, filled·S, D)`` keys and values (views, no copy)."""
        n, h, s, d = k.shape
        shape = (n, h, self.ring.capacity, s, d)
        if self.k is None or self.k.shape != shape or self.k.dtype != k.dtype:
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        assert self.v is not None
        slot = self.ring.slot
        self.k[:, :, slot], self.v[:, :, slot] = k, v
        used = self.ring.filled
        return self.k[:, :, :used].view(n, h, used * s, d), self.v[:, :, :used].view(n, h, used * s, d)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


def _attend_block(block: Block, x: Tensor, cache: LayerCache, rope: tuple[Tensor, Tensor] | None = None,
                  query_rows: Tensor | None = None) -> Tensor:
    """One pre-norm :class:`Block` on the current frame's tokens ``x`` ``(N, S, C)``, its queries
    attending to the cached frames' keys/values and its own (eval: no dropout)."""
    attn = block.attn
    n, s, c = x.shape
    qkv = attn.qkv(block.norm1(x)).view(n, s, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    if rope is not None:
        cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    residual = x
    if query_rows is not None:
        q, residual = q[:, :, query_rows], x[:, query_rows]
    keys, values = cache.write(k, v)
    out = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).reshape(n, q.shape[2], c)
    y = residual + block.ls1(attn.proj(out))
    return y + block.ls2(block.mlp(block.norm2(y)))


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class StepOutput:
    """The network's answer for one frame: raw ``depth`` ``(B, h, w)`` at the network input size and,
    with GEM, ``pose_enc`` (one ``(B, 9)`` per camera-head iteration), ``extrinsics`` ``(B, 4, 4)``,
    ``intrinsics`` ``(B, 3, 3)`` (pixels of the network input)."""

    depth: Tensor
    pose_enc: list[Tensor] | None = None
    extrinsics: Tensor | None = None
    intrinsics: Tensor | None = None


@dataclass
class _GemState:
    anchor_quat: Tensor | None = None
    anchor_trans: Tensor | None = None
    dist: Tensor | None = None  # (B, capacity) translation norm of each window frame


class OnlineModel:
    """A :class:`~gemdepth.models.VideoDepthModel` run one frame at a time with bounded caches (see the
    module docstring). :meth:`step` takes network inputs ``(B, 3, h, w)`` (ImageNet-normalised)."""

    def __init__(self, model: nn.Module, window: int | None = None) -> None:
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: its eager module (shapes change per frame)
        if not (callable(getattr(model, "encode", None)) and hasattr(model, "head") and hasattr(model, "plugins")):
            raise TypeError(
                f"online inference needs a gemdepth VideoDepthModel (encode, plug-ins, head); got {type(model).__name__}"
            )
        self.model = model
        limit = getattr(model, "max_frames", None)
        if window is None:
            window = limit if limit is not None else int((getattr(model, "config", None) or {}).get("head", {}).get(
                "num_frames", 32))
        window = int(window)
        if limit is not None and window > limit:
            raise ValueError(
                f"window {window} is longer than the temporal head's num_frames={limit} (its position table); "
                f"use window <= {limit}"
            )
        self.ring = FrameRing(window)
        self.window = window
        self._caches: dict[str, LayerCache] = {}
        self._gem = _GemState()
        self._motion: list[nn.Module] = list(getattr(model.head, "motion_modules", []))
        self._pe_proj: dict[int, tuple[Tensor, Tensor]] = {}
        for name, plugin in model.plugins.items():
            if not isinstance(plugin, (GEM, ASTT)):
                raise TypeError(f"online inference does not know the plug-in {name!r} ({type(plugin).__name__})")

    # -------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the past: the next frame starts a new stream (and becomes the anchor)."""
        self.ring.reset()
        for cache in self._caches.values():
            cache.reset()
        self._gem = _GemState()
        self._pe_proj.clear()  # recomputed from the current weights

    def cache(self, name: str) -> LayerCache:
        if name not in self._caches:
            self._caches[name] = LayerCache(self.ring)
        return self._caches[name]

    def state_bytes(self) -> dict[str, int]:
        """Bytes held per cache (all bounded by the window), for tests and benchmarks."""
        out = {name: c.nbytes() for name, c in self._caches.items()}
        if self._gem.dist is not None:
            out["gem.dist"] = self._gem.dist.numel() * self._gem.dist.element_size()
        return out

    @property
    def frames_seen(self) -> int:
        return self.ring.count

    # -------------------------------------------------------------- plug-ins
    def _gem_step(self, gem: nn.Module, tokens: Tensor, patch_h: int, patch_w: int, image_hw: tuple[int, int]
                  ) -> tuple[Tensor, dict[str, object]]:
        """GEM on the new frame's last token map ``(B, L, C)``: camera, pose embedding added."""
        b = tokens.shape[0]
        first = self.ring.count == 0
        which = 0 if first else 1
        special = 1 + gem.num_register_tokens
        x = torch.cat(
            [
                gem.camera_token[:, which].expand(b, -1, -1).to(tokens.dtype),
                gem.register_token[:, which].expand(b, -1, -1).to(tokens.dtype),
                tokens,
            ],
            dim=1,
        )
        pos = grid_positions(patch_h, patch_w, special, device=tokens.device)
        rope = rope_cos_sin(pos, gem.block_head_dim, gem.rope_frequency)
        depth = len(gem.frame_blocks)
        camera_row = torch.zeros(1, dtype=torch.long, device=tokens.device)
        global_cam = x[:, 0]
        for i, (fblk, gblk) in enumerate(zip(gem.frame_blocks, gem.global_blocks)):
            x = fblk(x, rope)
            frame_cam = x[:, 0]
            if i == depth - 1:
                global_cam = _attend_block(gblk, x, self.cache(f"gem.global.{i}"), rope, camera_row)[:, 0]
            else:
                x = _attend_block(gblk, x, self.cache(f"gem.global.{i}"), rope)
        cam = torch.cat([frame_cam, global_cam], dim=-1)[:, None]  # (B, 1, 2C)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            poses = self._camera_head_step(gem.camera_head, cam.float())
            pose = poses[-1]  # (B, 1, 9)
            extrinsics, intrinsics = pose_encoding_to_cameras(pose, *image_hw)
            embed = self._pose_embedding(gem, pose)
        tokens = tokens + embed.to(tokens.dtype)[:, None]
        return tokens, {"pose_enc": [p[:, 0] for p in poses], "extrinsics": extrinsics[:, 0],
                        "intrinsics": intrinsics[:, 0]}

    def _camera_head_step(self, head: nn.Module, cam: Tensor) -> list[Tensor]:
        """The camera head's refinement on the new frame's camera token, its trunk attending to the
        window's cached trunk tokens of the same iteration (as :class:`CameraHead.forward`)."""
        tokens = head.token_norm(cam)
        normed = head.adaln_norm(tokens)
        raw: Tensor | None = None
        out: list[Tensor] = []
        for it in range(head.num_iterations):
            pose_in = head.empty_pose_tokens.expand(*tokens.shape[:2], -1) if raw is None else raw
            shift, scale, gate = head.poseLN_modulation(head.embed_pose(pose_in)).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            for j, block in enumerate(head.trunk):
                x = _attend_block(block, x, self.cache(f"gem.camera.{it}.{j}"))
            delta = head.pose_branch(head.trunk_norm(x))
            raw = delta if raw is None else raw + delta
            out.append(activate_pose(raw, *head.acts))
        return out

    def _pose_embedding(self, gem: nn.Module, pose: Tensor) -> Tensor:
        """GEM's pose embedding ``(B, C)`` of the new frame: its pose relative to the anchor, the
        translation divided by the norm factor of the window's frames (as ``GEM.pose_inputs``)."""
        b = pose.shape[0]
        mask = gem.feed_mask(b, 1, pose.device)  # (B, 1)
        quat, trans = gem._noisy(pose[..., 3:7], pose[..., :3])
        st = self._gem
        if self.ring.count == 0:
            st.anchor_quat, st.anchor_trans = quat, trans
            st.dist = torch.zeros(b, self.ring.capacity, dtype=trans.dtype, device=trans.device)
        assert st.anchor_quat is not None and st.anchor_trans is not None and st.dist is not None
        q_rel, t_rel = relative_to_first_frame(torch.cat([st.anchor_quat, quat], 1), torch.cat([st.anchor_trans, trans], 1))
        q_rel, t_rel = q_rel[:, 1:], t_rel[:, 1:]
        keep = mask.unsqueeze(-1)
        identity = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=q_rel.dtype, device=q_rel.device)
        q_rel = torch.where(keep, q_rel, identity)
        t_rel = torch.where(keep, t_rel, torch.zeros_like(t_rel))
        st.dist[:, self.ring.slot] = t_rel[:, 0].norm(dim=-1)
        window = st.dist[:, : self.ring.filled]
        count = (window > 0).sum(dim=1).to(window.dtype)
        factor = (window.sum(dim=1) / (count + 1e-8)).clamp_min(1e-8)  # (B,)
        t_norm = t_rel / factor[:, None, None]
        log_scale = torch.log(factor + 1e-8).unsqueeze(-1)
        rot, tr, sc = gem.encode_poses(q_rel.reshape(-1, 4), t_norm.reshape(-1, 3), log_scale)
        return rot + tr + sc

    def _astt_tokens(self, astt: nn.Module, tokens: Tensor, grid_h: int, grid_w: int, tag: str) -> Tensor:
        """ASTT's prepare + block pairs on the new frame's tokens ``(B, L, C)``."""
        b, length, c = tokens.shape
        emb = frame_index_embedding(self.ring.position + 1, c, tokens.device)[-1].to(tokens.dtype)
        x = astt.dec_norm(tokens) + emb
        rope = None
        if len(astt.spatial_blocks):
            pos = grid_positions(grid_h, grid_w, device=tokens.device)
            rope = rope_cos_sin(pos, astt.spatial_head_dim, astt.rope_frequency)
        for i in range(astt.depth):
            if len(astt.spatial_blocks):
                x = _attend_block(astt.spatial_blocks[i], x, self.cache(f"{tag}.spatial.{i}"), rope)
            if len(astt.time_blocks):
                x = _attend_block(astt.time_blocks[i], x.reshape(b * length, 1, c), self.cache(f"{tag}.time.{i}"))
                x = x.view(b, length, c)
        return x

    def _astt_map(self, astt: nn.Module, x: Tensor, tag: str) -> Tensor:
        """ASTT at the mid/late position on the new frame's head map ``(B, F, h, w)`` (as ``forward_map``)."""
        b, ch, height, width = x.shape
        y = x
        if astt.position == "late" and astt.late_pool > 1:
            grid = (max(1, round(height / astt.late_pool)), max(1, round(width / astt.late_pool)))
            y = F.adaptive_avg_pool2d(x, grid)
        gh, gw = y.shape[-2:]
        tokens = astt.proj_in(y.flatten(2).transpose(1, 2))
        out = astt.proj_out(self._astt_tokens(astt, tokens, gh, gw, tag)).transpose(1, 2).reshape(b, ch, gh, gw)
        if (gh, gw) != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        return x + out

    # -------------------------------------------------------------- VDA motion modules
    def _projected_pe(self, attn: nn.Module) -> tuple[Tensor, Tensor]:
        """``pe @ W_k^T`` and ``pe @ W_v^T`` ``(max_len, C)`` of one temporal attention (cached)."""
        key = id(attn)
        if key not in self._pe_proj:
            pe = attn.pos_encoder.pe[0]
            self._pe_proj[key] = (linear(pe, attn.to_k.weight), linear(pe, attn.to_v.weight))
        return self._pe_proj[key]

    def _motion_step(self, index: int, module: nn.Module, x: Tensor, frames: int = 1) -> Tensor:
        """One motion module on the new frame's map ``(B, C, h, w)`` (as ``TemporalTransformer.forward``)."""
        tt = module.temporal_transformer
        b, ch, h, w = x.shape
        seq = tt.norm(x).view(b, ch, h * w).transpose(1, 2).reshape(b * h * w, 1, ch)
        seq = tt.proj_in(seq)
        place = self.ring.position
        slots = torch.tensor(self.ring.positions(), device=x.device)
        for bi, block in enumerate(tt.transformer_blocks):
            for ai, (attn, norm) in enumerate(zip(block.attention_blocks, block.norms)):
                seq = seq + self._temporal_attention(attn, norm(seq), self.cache(f"motion.{index}.{bi}.{ai}"),
                                                     place, slots)
            seq = seq + block.ff(block.ff_norm(seq))
        seq = tt.proj_out(seq)
        return seq.view(b, h * w, ch).transpose(1, 2).reshape(b, ch, h, w) + x

    def _temporal_attention(self, attn: nn.Module, seq: Tensor, cache: LayerCache, place: int, slots: Tensor
                            ) -> Tensor:
        """:class:`TemporalAttention` for the new frame ``(N, 1, C)``: its query at window place
        ``place``; keys/values cached position-free, the projected position table added per slot."""
        n, _, dim = seq.shape
        heads = attn.heads
        pe = attn.pos_encoder.pe[0].to(seq.dtype)
        q = linear(seq + pe[place], attn.to_q.weight).view(n, 1, heads, dim // heads).transpose(1, 2)
        k = linear(seq, attn.to_k.weight).view(n, 1, heads, dim // heads).transpose(1, 2)
        v = linear(seq, attn.to_v.weight).view(n, 1, heads, dim // heads).transpose(1, 2)
        keys, values = cache.write(k, v)
        pk, pv = self._projected_pe(attn)
        used = slots.shape[0]
        pk = pk.to(seq.dtype)[slots].view(used, heads, dim // heads).transpose(0, 1)  # (heads, n_used, D)
        pv = pv.to(seq.dtype)[slots].view(used, heads, dim // heads).transpose(0, 1)
        out = F.scaled_dot_product_attention(q, keys + pk, values + pv)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(n, 1, dim)))

    @contextlib.contextmanager
    def _motion_override(self) -> Iterator[None]:
        """Route the head's motion modules through :meth:`_motion_step` for this step (restored after)."""
        for i, module in enumerate(self._motion):
            module.forward = (lambda x, frames=1, _i=i, _m=module: self._motion_step(_i, _m, x, frames))
        try:
            yield
        finally:
            for module in self._motion:
                if "forward" in module.__dict__:
                    del module.forward

    # -------------------------------------------------------------- one frame
    def step(self, x: Tensor) -> StepOutput:
        """The depth (and cameras) of the next frame ``x`` ``(B, 3, h, w)``; updates the caches."""
        model = self.model
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4:
            raise ValueError(f"a frame must be (3, h, w) or (B, 3, h, w) network input, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        patch_h, patch_w = height // PATCH_SIZE, width // PATCH_SIZE
        with torch.inference_mode():
            encoded = model.encode(x[:, None])
            tokens = [t for t, _ in encoded]
            cls = [c for _, c in encoded]
            extras: dict[str, object] = {}
            hooks: dict[str, list[tuple[str, nn.Module]]] = {}
            for name, plugin in model.plugins.items():
                if plugin.position != "early":
                    hooks.setdefault(plugin.position, []).append((name, plugin))
                elif isinstance(plugin, GEM):
                    tokens[3], extras = self._gem_step(plugin, tokens[3], patch_h, patch_w, (height, width))
                else:
                    tokens[3] = self._astt_tokens(plugin, tokens[3], patch_h, patch_w, f"astt.{name}")

            def chain(entries: list[tuple[str, nn.Module]]) -> Callable[[Tensor], Tensor]:
                def run(m: Tensor) -> Tensor:
                    for name, plugin in entries:
                        m = self._astt_map(plugin, m, f"astt.{name}")
                    return m

                return run

            with self._motion_override():
                depth = model.head(list(zip(tokens, cls)), patch_h, patch_w, frames=1,
                                   hooks={pos: chain(entries) for pos, entries in hooks.items()})
            if depth.shape[-2:] != (height, width):
                depth = F.interpolate(depth, size=(height, width), mode="bilinear", align_corners=True)
            depth = F.relu(depth)[:, 0]
            self.ring.advance()
        return StepOutput(depth=depth, pose_enc=extras.get("pose_enc"),  # type: ignore[arg-type]
                          extrinsics=extras.get("extrinsics"), intrinsics=extras.get("intrinsics"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- reference
@contextlib.contextmanager
def causal_reference(model: nn.Module, frames: int) -> Iterator[nn.Module]:
    """The offline ``model`` with frame-causal attention, for clips of ``frames`` frames: frame ``t``
    sees frames ``0..t`` only in every module that mixes frames (VDA motion modules, GEM's global
    blocks and camera trunk, ASTT's blocks), and GEM's translation norm factor of frame ``t`` is taken
    over frames ``0..t``. ``model(video)`` inside equals :class:`OnlineModel` stepping through the
    same ``frames`` frames (the tests' reference). Restores everything on exit."""
    from gemdepth.models.temporal import TemporalAttention

    saved: list[tuple[object, str, object]] = []

    def put(obj: object, name: str, value: object) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    blocks: list[Block] = []
    for plugin in model.plugins.values():
        if isinstance(plugin, GEM):
            blocks += list(plugin.global_blocks) + list(plugin.camera_head.trunk)
            put(plugin, "causal", True)
        elif isinstance(plugin, ASTT):
            blocks += list(plugin.spatial_blocks) + list(plugin.time_blocks)
    for block in blocks:
        put(block.attn, "causal_frames", frames)
        put(block, "max_memory", None)  # the plain (unsliced) attention path, which takes the mask
    for module in model.modules():
        if isinstance(module, TemporalAttention):
            put(module, "causal", True)
    try:
        yield model
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


# ---------------------------------------------------------------------------------------------- user API
class Stream:
    """Frames in, :class:`~gemdepth.inference.windowing.FrameResult` out, one at a time (see :func:`stream`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | None = None,
        input_size: int = 518,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_resolution: int | None = None,
        align: bool = True,
    ) -> None:
        if getattr(model, "training", False):
            log.warning("the model is in training mode; call model.eval() for deterministic inference")
        self.online = OnlineModel(model, window)
        if input_size < PATCH_SIZE:
            raise ValueError(f"input_size must be at least {PATCH_SIZE} px, got {input_size}")
        self.input_size = int(input_size)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.max_resolution = max_resolution
        self.metric = bool(getattr(model, "is_metric", False))
        self.align = bool(align) and not self.metric
        self._frame_hw: tuple[int, int] | None = None
        self._previous: Tensor | None = None  # the last output depth (alignment reference)
        self.index = 0
        self.last_scale_shift: tuple[float, float] = (1.0, 0.0)

    @property
    def window(self) -> int:
        return self.online.window

    def reset(self) -> None:
        """Start a new stream: caches, anchor, alignment reference and frame size are forgotten."""
        self.online.reset()
        self._frame_hw = None
        self._previous = None
        self.index = 0
        self.last_scale_shift = (1.0, 0.0)

    def state_bytes(self) -> dict[str, int]:
        """Bytes of every cache (bounded by the window), plus the alignment reference."""
        out = self.online.state_bytes()
        if self._previous is not None:
            out["align.previous"] = self._previous.numel() * self._previous.element_size()
        return out

    def _frame(self, frame: object) -> np.ndarray:
        frame = check_frame(frame, self.index, self.max_resolution)
        if self._frame_hw is None:
            self._frame_hw = frame.shape[:2]
        elif frame.shape[:2] != self._frame_hw:
            raise ValueError(
                f"frame {self.index}: size {frame.shape[0]}x{frame.shape[1]} differs from the first frame's "
                f"{self._frame_hw[0]}x{self._frame_hw[1]}; call reset() to start a stream of another size"
            )
        return frame

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(self, frame: np.ndarray | Tensor) -> FrameResult:
        """Depth (and camera with GEM) of the next uint8 ``(H, W, 3)`` RGB frame, at the frame's size."""
        frame = self._frame(frame)
        hw = self._frame_hw
        assert hw is not None
        net_hw = network_size(hw[0], hw[1], self.input_size)
        with torch.inference_mode():
            pixels = frame if frame.flags.writeable and frame.flags.c_contiguous else frame.copy()  # torch needs writable
            x = preprocess_frames(torch.from_numpy(pixels[None]).to(self.device), net_hw)
            with self._autocast():
                out = self.online.step(x)
            depth = upsample_depth(out.depth.to(torch.float32), hw)[0]
            if self.align and self._previous is not None:
                s, b = fit_scale_shift(depth.to(torch.float64), self._previous.to(torch.float64))
                scale, shift = float(s.to(torch.float32)), float(b.to(torch.float32))
                depth = (depth * scale + shift).clamp_min_(0.0)
                self.last_scale_shift = (scale, shift)
            self._previous = depth
            extr = intr = None
            if out.extrinsics is not None and out.intrinsics is not None:
                extr = out.extrinsics[0].to(torch.float32).cpu().numpy().copy()
                k = out.intrinsics[0].to(torch.float32).cpu().clone()
                k[0, :] *= hw[1] / net_hw[1]
                k[1, :] *= hw[0] / net_hw[0]
                intr = k.numpy()
            result = FrameResult(index=self.index, depth=depth.cpu().numpy().copy(), image=frame,
                                 extrinsics=extr, intrinsics=intr, window=0)
        self.index += 1
        return result

    def run(self, frames: Iterable[np.ndarray], latencies: list[float] | None = None,
            interrupt_ends: bool = False) -> Iterator[FrameResult]:
        """:meth:`step` over an iterable; each frame's seconds (read excluded) appended to ``latencies``.

        ``interrupt_ends``: Ctrl-C while reading or computing ends the stream cleanly (a webcam has no end).
        """
        try:
            for frame in frames:
                start = time.perf_counter()
                result = self.step(frame)
                if latencies is not None:
                    latencies.append(time.perf_counter() - start)
                yield result
        except KeyboardInterrupt:
            if not interrupt_ends:
                raise
            log.warning("interrupted: the stream ends after %d frames", self.index)


def stream(
    model: nn.Module,
    *,
    window: int | None = None,
    input_size: int = 518,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_resolution: int | None = None,
    align: bool = True,
) -> Stream:
    """Online inference: ``s = gemdepth.stream(model)``, then ``s.step(frame)`` per uint8 RGB frame.

    Each call returns the frame's :class:`~gemdepth.inference.windowing.FrameResult` (depth at the
    frame size, and ``extrinsics``/``intrinsics`` with GEM) from one encoder pass and attention over
    a bounded cache of the past ``window`` frames (default: the model's training window);
    ``s.reset()`` starts a new stream. ``align`` fits each frame's relative disparity to the
    previous output (the offline least-squares scale/shift). See :mod:`gemdepth.inference.stream`.
    """
    return Stream(model, window=window, input_size=input_size, device=device, dtype=dtype,
                  max_resolution=max_resolution, align=align)


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """Frames, mean / median / 95th percentile / max latency in milliseconds, and frames per second."""
    if not latencies:
        return {"frames": 0}
    ms = np.asarray(latencies, dtype=np.float64) * 1e3
    return {
        "frames": int(ms.size),
        "latency_ms_mean": round(float(ms.mean()), 3),
        "latency_ms_median": round(float(np.median(ms)), 3),
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "latency_ms_max": round(float(ms.max()), 3),
        "frames_per_second": round(float(1e3 / ms.mean()), 3) if ms.mean() > 0 else None,
    }


def write_latency_log(path: str | Path, latencies: list[float], source: object = None) -> dict[str, Any]:
    """Write ``frame,source_frame,latency_ms`` per frame to ``path`` (CSV, atomically); return the summary."""
    sampling = getattr(source, "sampling", None)
    step = getattr(source, "_step", 1)
    start = 0 if sampling is None else sampling.start
    lines = ["frame,source_frame,latency_ms"]
    lines += [f"{i},{start + i * step},{s * 1e3:.3f}" for i, s in enumerate(latencies)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"latency_log": Path(path).name, **latency_summary(latencies)}
