"""VGGT-style camera head: camera tokens → 9-d pose encodings, refined iteratively.

It attends across the frames of each clip (the trunk sees ``(B, T, C)``), modulates the
normalised camera tokens with the embedding of the current estimate (adaLN: shift, scale,
gate) and adds a predicted delta each iteration. The output per iteration is
``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]`` with translation and quaternion linear and
FoV ReLU'd (the official ``absT_quaR_FoV`` encoding and activations). Parameter names match
the official ``camera_head.*`` keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from gemdepth.models.plugins.attention import Block

__all__ = ["CameraHead", "activate_pose"]

POSE_DIM = 9
_ACTIVATIONS = ("linear", "relu", "exp", "inv_log")


def _activate(x: Tensor, kind: str) -> Tensor:
    if kind == "linear":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "inv_log":
        return torch.sign(x) * torch.expm1(x.abs())
    raise ValueError(f"unknown pose activation {kind!r}; choose one of {_ACTIVATIONS}")


def activate_pose(
    raw: Tensor, trans_act: str = "linear", quat_act: str = "linear", fov_act: str = "relu"
) -> Tensor:
    """Apply the per-part activations to raw 9-d pose encodings ``(..., 9)``."""
    return torch.cat(
        [
            _activate(raw[..., :3], trans_act),
            _activate(raw[..., 3:7], quat_act),
            _activate(raw[..., 7:], fov_act),
        ],
        dim=-1,
    )


class CameraHead(nn.Module):
    """Iterative pose regressor on per-frame camera tokens ``(B, T, dim_in)``.

    Defaults are the official ones (trunk of 4 blocks, 16 heads, 4 iterations, LayerScale
    0.01). ``forward`` returns one ``(B, T, 9)`` tensor per iteration, the last final; the
    estimate is detached between iterations as in the official head.
    """

    def __init__(
        self,
        dim_in: int,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        num_iterations: int = 4,
        trans_act: str = "linear",
        quat_act: str = "linear",
        fov_act: str = "relu",
    ) -> None:
        super().__init__()
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        for kind in (trans_act, quat_act, fov_act):
            if kind not in _ACTIVATIONS:
                raise ValueError(f"unknown pose activation {kind!r}; choose one of {_ACTIVATIONS}")
        self.num_iterations = num_iterations
        self.acts = (trans_act, quat_act, fov_act)
        self.trunk = nn.Sequential(
            *[
                Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, out_features=POSE_DIM)

    def forward(self, camera_tokens: Tensor) -> list[Tensor]:
        """Pose encodings ``(B, T, 9)`` after each refinement iteration."""
        tokens = self.token_norm(camera_tokens)
        normed = self.adaln_norm(tokens)
        raw: Tensor | None = None
        out: list[Tensor] = []
        for _ in range(self.num_iterations):
            if raw is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(*tokens.shape[:2], -1))
            else:
                raw = raw.detach()
                cond = self.embed_pose(raw)
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            raw = delta if raw is None else raw + delta
            out.append(activate_pose(raw, *self.acts))
        return out
