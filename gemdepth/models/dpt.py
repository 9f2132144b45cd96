"""The DPT depth head of Depth Anything V2 (per frame), with hook points for plug-ins.

Module and parameter names follow the official head (``projects``, ``resize_layers``,
``scratch.layerN_rn``, ``scratch.refinenetN.{out_conv,resConfUnit1,resConfUnit2}``,
``scratch.output_conv1``, ``scratch.output_conv2``) so checkpoint adapters only strip a prefix.
One deliberate difference: ``refinenet4`` has no ``resConfUnit1`` (it never gets a skip input,
so the official parameters are dead weight; the adapters account for them by name).

Hooks (the paper's Table 7 positions): ``"mid"`` acts on ``path_4``, the fused map at the patch
grid; ``"late"`` on ``path_1``, the last fused map right before ``output_conv1``. Each is a
``Callable[[Tensor (B·T, C, h, w)], Tensor]`` returning the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Hook = Callable[[Tensor], Tensor]
HOOK_NAMES = ("mid", "late")
HEAD_FEATURES_2 = 32  # width of the last hidden conv, hard-coded in Depth Anything


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (optionally with BatchNorm after each conv)."""

    def __init__(self, features: int, use_bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn1: nn.Module = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2: nn.Module = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with a skip map, refine, upsample (bilinear, align_corners) and project."""

    def __init__(self, features: int, use_bn: bool = False, has_skip: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


def _apply(hooks: Mapping[str, Hook] | None, name: str, x: Tensor) -> Tensor:
    if not hooks or name not in hooks:
        return x
    y = hooks[name](x)
    if y.shape != x.shape:
        raise ValueError(f"the {name!r} hook changed the feature map shape {tuple(x.shape)} → {tuple(y.shape)}")
    return y


class DPTHead(nn.Module):
    """Depth Anything V2's DPT head: 4 token maps → ``(B·T, 1, 14h, 14w)`` (before the final ReLU).

    ``num_frames`` is accepted (and ignored: frames are independent) so a config switches host
    between ``dav2`` and ``vda`` with one edit; ``max_frames`` is ``None`` here.
    """

    max_frames: int | None = None

    def __init__(
        self,
        in_channels: int,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        use_bn: bool = False,
        use_clstoken: bool = False,
        num_frames: int | None = None,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must have 4 entries, got {list(out_channels)}")
        self.features = features
        self.use_clstoken = use_clstoken
        c = list(out_channels)
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, ch, 1) for ch in c])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        if use_clstoken:
            self.readout_projects = nn.ModuleList(
                [nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in c]
            )
        scratch = nn.Module()
        for i, ch in enumerate(c, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
        scratch.refinenet1 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet2 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet3 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet4 = FeatureFusionBlock(features, use_bn, has_skip=False)
        scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_FEATURES_2, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(HEAD_FEATURES_2, 1, 1),
            nn.ReLU(True),
            nn.Identity(),
        )
        self.scratch = scratch

    def reassemble(self, features: Sequence[tuple[Tensor, Tensor]], patch_h: int, patch_w: int) -> list[Tensor]:
        """Token maps → 4 image-like maps at 4×, 2×, 1× and ½× the patch grid."""
        out = []
        for i, (tokens, cls) in enumerate(features):
            if self.use_clstoken:
                readout = cls.unsqueeze(1).expand_as(tokens)
                tokens = self.readout_projects[i](torch.cat([tokens, readout], dim=-1))
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], patch_h, patch_w)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out

    def output(self, path_1: Tensor, patch_h: int, patch_w: int) -> Tensor:
        """Last fused map → one-channel depth at the network's input size (14 px per patch)."""
        out = self.scratch.output_conv1(path_1)
        out = F.interpolate(out, size=(patch_h * 14, patch_w * 14), mode="bilinear", align_corners=True)
        return self.scratch.output_conv2(out)

    def forward(
        self,
        features: Sequence[tuple[Tensor, Tensor]],
        patch_h: int,
        patch_w: int,
        frames: int = 1,
        hooks: Mapping[str, Hook] | None = None,
    ) -> Tensor:
        """``features``: 4 × ``(tokens (B·T, h·w, C), cls (B·T, C))`` → ``(B·T, 1, 14h, 14w)``."""
        layer_1, layer_2, layer_3, layer_4 = self.reassemble(features, patch_h, patch_w)
        s = self.scratch
        rn1, rn2, rn3, rn4 = s.layer1_rn(layer_1), s.layer2_rn(layer_2), s.layer3_rn(layer_3), s.layer4_rn(layer_4)
        path_4 = _apply(hooks, "mid", s.refinenet4(rn4, size=rn3.shape[2:]))
        path_3 = s.refinenet3(path_4, rn3, size=rn2.shape[2:])
        path_2 = s.refinenet2(path_3, rn2, size=rn1.shape[2:])
        path_1 = _apply(hooks, "late", s.refinenet1(path_2, rn1))
        return self.output(path_1, patch_h, patch_w)
