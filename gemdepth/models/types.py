"""Typed containers passed between encoder, plug-ins and heads, and returned to users."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class VideoFeatures:
    """The encoder's four intermediate token maps of a clip, as the plug-ins see them.

    ``tokens[i]`` is ``(B·T, L, C)`` (patch tokens after the encoder's final norm, class
    token removed, row-major ``L = h·w``); ``cls[i]`` is ``(B·T, C)``. Plug-ins rewrite
    ``tokens`` in place (GEM adds its pose embedding to ``tokens[3]``; ASTT then mixes it);
    ``extras`` carries what ends up in the model output (``pose_enc``, ``extrinsics``,
    ``intrinsics``) and per-frame diagnostics (``pose_feed_mask``).
    """

    tokens: list[Tensor]
    cls: list[Tensor]
    batch: int
    frames: int
    patch_h: int
    patch_w: int
    image_h: int
    image_w: int
    extras: dict[str, object] = field(default_factory=dict)


@dataclass
class DepthOutput:
    """What ``model(video)`` returns.

    ``depth`` is relative inverse depth (disparity up to scale and shift, ≥ 0) ``(B, T, H, W)``.
    With GEM: ``pose_enc`` is a list with one ``(B, T, 9)`` tensor per camera-head iteration
    (last is final), ``extrinsics`` ``(B, T, 4, 4)`` world-to-camera (OpenCV) relative to the
    predicted frame-0 convention, ``intrinsics`` ``(B, T, 3, 3)`` in pixels of the input.
    """

    depth: Tensor
    pose_enc: list[Tensor] | None = None
    extrinsics: Tensor | None = None
    intrinsics: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "DepthOutput":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return DepthOutput(
            depth=self.depth.to(device),
            pose_enc=None if self.pose_enc is None else [p.to(device) for p in self.pose_enc],
            extrinsics=move(self.extrinsics),
            intrinsics=move(self.intrinsics),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )
