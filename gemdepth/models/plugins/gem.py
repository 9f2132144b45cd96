"""GEM, the Geometry-Embedding Module (paper §3.2): camera poses → embeddings on the tokens.

What it does to the encoder's last token map ``tokens[3]`` ``(B·T, L, C)``:

1. Prepends one camera token and ``R`` register tokens per frame (the first slot of each
   learned ``(1, 2, ·, C)`` parameter for frame 0, the second for every other frame) and runs
   one frame-attention block (within each frame) then one global-attention block (across all
   frames of the clip). Both are VGGT blocks with qk-norm, LayerScale and 2-D RoPE
   (frequency 100; patch positions +1, special tokens at (0, 0)).
2. The camera head reads ``[frame-block output ‖ global-block output]`` at the camera slot
   ``(B, T, 2C)`` and predicts 9-d pose encodings (4 refinement iterations). Extrinsics and
   intrinsics follow from the last one.
3. The poses are made relative to frame 0 (``q_rel = q0⁻¹ ⊗ q_t``,
   ``t_rel = R(q0⁻¹)·t_t − R(q0⁻¹)·t_0``), frames that are not fed get the identity pose,
   translations are divided by the clip's norm factor
   ``nf = Σ‖t_rel‖ / (#{‖t_rel‖ > 0} + 1e-8)`` (clipped ≥ 1e-8), and three MLP encoders
   (quaternion 4 → C, translation 3 → C, ``log(nf + 1e-8)`` 1 → C, each
   ``→128→256→512→C`` with GELU and a final LayerNorm) give the embedding that is added to
   every patch token of the frame.

ASTT then applies its ``dec_norm`` (the official ``LN(tokens + pose_embed)`` is split across
the two plug-ins at that point).

**Pose feeding** (the paper's Table 9). In training three Bernoulli masks decide which
frames get their predicted pose: per clip ``pose_clip_prob`` (0.9), per frame
``pose_frame_prob`` (0.95) and per clip ``pose_prob`` (0.5, Table 9's knob: 0 → never,
1 → always up to the other two). In eval every frame gets its pose (none when
``pose_prob == 0``, override with ``eval_feed_pose``); ``stochastic_inference=True`` draws
the training masks in eval too, as the official forward does.

Differences from the official code, on purpose: the masks are vectorised and drawn per clip
correctly for ``B > 1`` (the official ``repeat(T)`` assigns clip-level masks and norm factors
to rows ``i % B``; ``official_batch_order=True`` reproduces that); the global block computes
only the camera-token rows that are used (same numbers, far less attention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gemdepth.geometry import (
    pose_encoding_to_cameras,
    quat_inverse,
    quat_multiply,
    quat_to_rotmat,
)
from gemdepth.models.chunking import maybe_checkpoint
from gemdepth.models.plugins.attention import Block
from gemdepth.models.plugins.base import PlugIn
from gemdepth.models.plugins.camera_head import CameraHead
from gemdepth.models.plugins.rope import grid_positions, rope_cos_sin
from gemdepth.models.registry import PLUGINS
from gemdepth.models.types import VideoFeatures

__all__ = ["GEM", "PoseEncoder", "relative_to_first_frame", "normalize_translations"]


class PoseEncoder(nn.Module):
    """MLP ``in → 128 → 256 → 512 → out`` (GELU) + LayerNorm(eps 1e-6).

    The official ``GlobalRepresentationEncoder`` (UniCeption) with a flat ``nn.Sequential``
    instead of its nested one; the weight adapter renames the keys.
    """

    def __init__(self, in_chans: int, out_dim: int, hidden: Sequence[int] = (128, 256, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.GELU()]
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(out_dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.mlp(x))


def relative_to_first_frame(quat: Tensor, trans: Tensor) -> tuple[Tensor, Tensor]:
    """Poses ``(B, T, 4)``, ``(B, T, 3)`` re-expressed relative to frame 0 of each clip.

    ``q_rel = q0⁻¹ ⊗ q_t`` (``q⁻¹ = conj(q)/|q|²``, quaternions not normalised) and
    ``t_rel = R(q0⁻¹)·t_t − R(q0⁻¹)·t_0`` with ``R`` of the normalised quaternion; frame 0's
    translation comes out exactly zero.
    """
    inv0 = quat_inverse(quat[:, :1])
    q_rel = quat_multiply(inv0.expand_as(quat), quat)
    rot = quat_to_rotmat(inv0)  # (B, 1, 3, 3)
    rotated = (rot @ trans.unsqueeze(-1)).squeeze(-1)
    return q_rel, rotated - rotated[:, :1]


def normalize_translations(trans: Tensor) -> tuple[Tensor, Tensor]:
    """Translations ``(B, T, 3)`` divided by each clip's norm factor, and that factor ``(B,)``.

    ``nf = Σ_t ‖t‖ / (#{t: ‖t‖ > 0} + 1e-8)`` clipped at ≥ 1e-8, the official formula: zero
    translations (frame 0, frames not fed) add nothing to the sum nor to the count.
    """
    dist = trans.norm(dim=-1)
    count = (dist > 0).sum(dim=1).to(trans.dtype)
    factor = (dist.sum(dim=1) / (count + 1e-8)).clamp_min(1e-8)
    return trans / factor[:, None, None], factor


@PLUGINS.register("gem")
class GEM(PlugIn):
    """Geometry-Embedding Module; see the module docstring.

    Options (YAML keys):

    * ``num_heads``: the official constructor's value; the frame and global blocks use
      ``num_heads // 2`` heads (ViT-L: 32 → 16 heads of 64). Default ``dim // 32``.
    * ``num_register_tokens`` (4), ``depth`` (frame/global block pairs; the official runs 1),
      ``camera_trunk_depth`` (4), ``camera_num_heads`` (16), ``camera_iterations`` (4),
      ``pose_hidden_dims`` ((128, 256, 512)); the pose encoders always output ``dim``.
    * ``pose_prob`` (0.5), ``pose_clip_prob`` (0.9), ``pose_frame_prob`` (0.95): training
      feeding masks; ``eval_feed_pose`` (default: ``pose_prob > 0``); ``stochastic_inference``
      (draw the training masks in eval, as the official forward).
    * ``pose_noise`` (0; relative std of Gaussian noise on the fed translations and quaternions,
      Table 5; the returned cameras stay clean), ``pose_noise_seed`` (None: global RNG).
    * ``official_batch_order`` (False): reproduce the official ``i % B`` row assignment.
    """

    position = "early"
    token_levels = (3,)  # the last map only

    def __init__(
        self,
        dim: int,
        head_features: int | None = None,
        num_heads: int | None = None,
        num_register_tokens: int = 4,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        qk_norm: bool = True,
        rope_frequency: float = 100.0,
        camera_trunk_depth: int = 4,
        camera_num_heads: int = 16,
        camera_iterations: int = 4,
        pose_hidden_dims: Sequence[int] = (128, 256, 512),
        pose_prob: float = 0.5,
        pose_clip_prob: float = 0.9,
        pose_frame_prob: float = 0.95,
        eval_feed_pose: bool | None = None,
        stochastic_inference: bool = False,
        pose_noise: float = 0.0,
        pose_noise_seed: int | None = None,
        official_batch_order: bool = False,
        position: str = "early",
    ) -> None:
        super().__init__()
        if position != "early":
            raise ValueError(f"GEM acts on encoder tokens only (position 'early'), got {position!r}")
        for name, p in (("pose_prob", pose_prob), ("pose_clip_prob", pose_clip_prob),
                        ("pose_frame_prob", pose_frame_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"GEM {name} must be in [0, 1], got {p}")
        if pose_noise < 0:
            raise ValueError(f"GEM pose_noise must be >= 0, got {pose_noise}")
        if depth < 1:
            raise ValueError(f"GEM depth must be >= 1, got {depth}")
        num_heads = num_heads or max(2, dim // 32)
        block_heads = max(1, num_heads // 2)
        self.dim = dim
        self.block_head_dim = dim // block_heads
        self.num_register_tokens = num_register_tokens
        self.rope_frequency = rope_frequency
        self.pose_prob = pose_prob
        self.pose_clip_prob = pose_clip_prob
        self.pose_frame_prob = pose_frame_prob
        self.eval_feed_pose = eval_feed_pose
        self.stochastic_inference = stochastic_inference
        self.pose_noise = pose_noise
        self.pose_noise_seed = pose_noise_seed
        self.official_batch_order = official_batch_order
        self._noise_gen: torch.Generator | None = None
        self.causal = False  # frame t's translation norm factor over frames <= t (the online reference)
        self.checkpointing = False  # activation checkpointing of the frame/global blocks (training)

        # N(0, 1) as the official constructor draws them (no later re-initialisation)
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, dim))

        def vggt_block() -> Block:
            return Block(dim, block_heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm,
                         init_values=init_values)

        self.frame_blocks = nn.ModuleList([vggt_block() for _ in range(depth)])
        self.global_blocks = nn.ModuleList([vggt_block() for _ in range(depth)])
        self.camera_head = CameraHead(
            2 * dim,
            trunk_depth=camera_trunk_depth,
            num_heads=camera_num_heads,
            num_iterations=camera_iterations,
        )
        self.cam_rot_encoder = PoseEncoder(4, dim, pose_hidden_dims)
        self.cam_trans_encoder = PoseEncoder(3, dim, pose_hidden_dims)
        self.cam_trans_scale_encoder = PoseEncoder(1, dim, pose_hidden_dims)

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _per_frame(token: Tensor, batch: int, frames: int) -> Tensor:
        """``(1, 2, X, C)`` → ``(B·T, X, C)``: slot 0 for frame 0, slot 1 for the others."""
        first = token[:, :1].expand(batch, 1, *token.shape[2:])
        others = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
        return torch.cat([first, others], dim=1).reshape(batch * frames, *token.shape[2:])

    def camera_tokens(self, tokens: Tensor, batch: int, frames: int, patch_h: int,
                      patch_w: int) -> Tensor:
        """Camera-token outputs ``(B, T, 2C)`` = [frame block ‖ global block] of ``tokens``."""
        bt, n, c = tokens.shape
        if bt != batch * frames or n != patch_h * patch_w or c != self.dim:
            raise ValueError(
                f"GEM expects tokens (B·T={batch * frames}, L={patch_h * patch_w}, "
                f"C={self.dim}), got {tuple(tokens.shape)}"
            )
        special = 1 + self.num_register_tokens
        x = torch.cat(
            [
                self._per_frame(self.camera_token, batch, frames).to(tokens.dtype),
                self._per_frame(self.register_token, batch, frames).to(tokens.dtype),
                tokens,
            ],
            dim=1,
        )
        p = x.shape[1]
        pos = grid_positions(patch_h, patch_w, special, device=tokens.device)
        rope = rope_cos_sin(pos, self.block_head_dim, self.rope_frequency)  # one frame's: it tiles the clip
        camera_rows = torch.arange(frames, device=tokens.device) * p
        depth = len(self.frame_blocks)
        for i, (fblk, gblk) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            if fblk.bounded_inference():  # x is this method's own concatenation: overwrite it frame slice by slice
                x = fblk.forward_inplace(x, rope)
            else:
                x = maybe_checkpoint(self.checkpointing, fblk, x, rope)
            frame_cam = x[:, 0].view(batch, frames, c)
            flat = x.reshape(batch, frames * p, c)
            if i == depth - 1:  # only the camera rows of the last global block are used
                global_cam = maybe_checkpoint(self.checkpointing, gblk, flat, rope, camera_rows)
            else:
                x = maybe_checkpoint(self.checkpointing, gblk, flat, rope).reshape(batch * frames, p, c)
        return torch.cat([frame_cam, global_cam], dim=-1)

    def feed_mask(self, batch: int, frames: int, device: torch.device) -> Tensor:
        """Which frames get their predicted pose embedded ``(B, T)`` bool."""
        if not (self.training or self.stochastic_inference):
            feed = self.eval_feed_pose if self.eval_feed_pose is not None else self.pose_prob > 0
            return torch.full((batch, frames), bool(feed), device=device)
        clip = torch.rand(batch, device=device) < self.pose_clip_prob
        frame = torch.rand(batch, frames, device=device) < self.pose_frame_prob
        camera = torch.rand(batch, device=device) < self.pose_prob
        per_clip = clip & camera
        if self.official_batch_order:
            per_clip_rows = per_clip[torch.arange(batch * frames, device=device) % batch]
            return frame & per_clip_rows.view(batch, frames)
        return frame & per_clip[:, None]

    def _noisy(self, quat: Tensor, trans: Tensor) -> tuple[Tensor, Tensor]:
        """Add relative Gaussian noise ``σ·‖x‖·ε`` to translations and quaternions (Table 5)."""
        if self.pose_noise <= 0:
            return quat, trans
        gen = None
        if self.pose_noise_seed is not None:
            if self._noise_gen is None or self._noise_gen.device != quat.device:
                self._noise_gen = torch.Generator(device=quat.device)
                self._noise_gen.manual_seed(self.pose_noise_seed)
            gen = self._noise_gen
        eps_q = torch.randn(quat.shape, generator=gen, device=quat.device, dtype=quat.dtype)
        eps_t = torch.randn(trans.shape, generator=gen, device=trans.device, dtype=trans.dtype)
        quat = quat + self.pose_noise * quat.norm(dim=-1, keepdim=True) * eps_q
        trans = trans + self.pose_noise * trans.norm(dim=-1, keepdim=True) * eps_t
        return quat, trans

    def reset_noise(self) -> None:
        """Restart the pose-noise generator from ``pose_noise_seed``."""
        self._noise_gen = None

    def pose_inputs(self, pose_enc: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder inputs ``(B·T, 4)``, ``(B·T, 3)``, ``(B·T, 1)`` of poses ``(B, T, 9)``.

        Relative quaternion, normalised relative translation and ``log(nf + 1e-8)``;
        detached, as the official encoders read ``input.data``.
        """
        batch, frames = pose_enc.shape[:2]
        pose_enc = pose_enc.detach()
        quat, trans = self._noisy(pose_enc[..., 3:7], pose_enc[..., :3])
        q_rel, t_rel = relative_to_first_frame(quat, trans)
        keep = mask.unsqueeze(-1)
        identity = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=q_rel.dtype, device=q_rel.device)
        q_rel = torch.where(keep, q_rel, identity)
        t_rel = torch.where(keep, t_rel, torch.zeros_like(t_rel))
        t_norm, factor = normalize_translations(t_rel)
        if self.causal:  # per frame, over frames 0..t: what the online mode can know at frame t
            dist = t_rel.norm(dim=-1)
            running = dist.cumsum(dim=1) / ((dist > 0).cumsum(dim=1).to(dist.dtype) + 1e-8)
            t_norm, factor = t_rel / running.clamp_min(1e-8)[..., None], running.clamp_min(1e-8)
            return q_rel.reshape(-1, 4), t_norm.reshape(-1, 3), torch.log(factor.reshape(-1) + 1e-8).unsqueeze(-1)
        if self.official_batch_order:
            rows = factor[torch.arange(batch * frames, device=factor.device) % batch]
        else:
            rows = factor.repeat_interleave(frames)
        log_scale = torch.log(rows + 1e-8).unsqueeze(-1)
        return q_rel.reshape(-1, 4), t_norm.reshape(-1, 3), log_scale

    def encode_poses(self, quat: Tensor, trans: Tensor, log_scale: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """The three pose-encoder outputs ``(B·T, C)`` (rotation, translation, scale)."""
        return (
            self.cam_rot_encoder(quat),
            self.cam_trans_encoder(trans),
            self.cam_trans_scale_encoder(log_scale),
        )

    # ------------------------------------------------------------------ forward
    def forward(self, feats: VideoFeatures) -> VideoFeatures:
        """Predict cameras, write them to ``extras`` and add the pose embedding to tokens[3]."""
        tokens = feats.tokens[3]
        batch, frames = feats.batch, feats.frames
        cam = self.camera_tokens(tokens, batch, frames, feats.patch_h, feats.patch_w)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            pose_list = self.camera_head(cam.float())
            extrinsics, intrinsics = pose_encoding_to_cameras(
                pose_list[-1], feats.image_h, feats.image_w
            )
            mask = self.feed_mask(batch, frames, tokens.device)
            embeds = self.encode_poses(*self.pose_inputs(pose_list[-1], mask))
            pose_embed = embeds[0] + embeds[1] + embeds[2]
        feats.tokens = list(feats.tokens)
        feats.tokens[3] = tokens + pose_embed.to(tokens.dtype).unsqueeze(1)
        feats.extras["pose_enc"] = pose_list
        feats.extras["extrinsics"] = extrinsics
        feats.extras["intrinsics"] = intrinsics
        feats.extras["pose_feed_mask"] = mask
        return feats
