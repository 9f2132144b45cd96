"""Host heads by name: ``dav2`` (per-frame DPT head) and ``vda`` (DPT head with motion modules).

A host is the encoder plus one of these heads (see :class:`~gemdepth.models.model.VideoDepthModel`);
the registry entry builds the head from the encoder width and the config's ``head`` section.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gemdepth.models.dpt import DPTHead
from gemdepth.models.registry import HOSTS
from gemdepth.models.temporal import TemporalDPTHead

# Head widths of the released Depth Anything V2 / Video Depth Anything models per encoder size.
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "vits": {"features": 64, "out_channels": [48, 96, 192, 384]},
    "vitb": {"features": 128, "out_channels": [96, 192, 384, 768]},
    "vitl": {"features": 256, "out_channels": [256, 512, 1024, 1024]},
    "vitg": {"features": 384, "out_channels": [1536, 1536, 1536, 1536]},
}
HEAD_KEYS = ("features", "out_channels", "num_frames", "use_bn", "use_clstoken", "metric", "max_depth")
# Optional head keys (absent = relative disparity): ``metric`` the output is depth in metres (metric VDA,
# same layers); ``max_depth`` a sigmoid output scaled to metres (metric Depth Anything V2), implies metric.
COMMON_HEAD_DEFAULTS: dict[str, Any] = {"num_frames": 32, "use_bn": False, "use_clstoken": False}


@HOSTS.register("dav2")
def dav2_head(in_channels: int, **head: Any) -> nn.Module:
    """Depth Anything V2: every frame decoded on its own."""
    return DPTHead(in_channels, **head)


@HOSTS.register("vda")
def vda_head(in_channels: int, **head: Any) -> nn.Module:
    """Video Depth Anything: the DPT head with four temporal motion modules."""
    return TemporalDPTHead(in_channels, **head)
