"""The plug-in contract: how GEM, ASTT and future modules attach to any host.

A plug-in sits at one of three places (the paper's Table 7):

* ``early`` (Position 1, the paper's choice): on the encoder's token maps, before the head.
  :meth:`PlugIn.forward` receives and returns :class:`~gemdepth.models.types.VideoFeatures`.
* ``mid`` (Position 2, where Video Depth Anything mixes time): on the head's fused map at the
  patch grid. :meth:`PlugIn.forward_map` receives ``(B·T, C, h, w)`` and returns the same shape.
* ``late`` (Position 3, FlashDepth's place): on the head's last fused map before the output
  convolutions, through :meth:`PlugIn.forward_map` too.

Plug-ins run in the order the config lists them; one hands data to the next through
``VideoFeatures.extras``.
"""

from __future__ import annotations

from torch import Tensor, nn

from gemdepth.models.types import VideoFeatures

PLUGIN_POSITIONS = ("early", "mid", "late")


class PlugIn(nn.Module):
    """Base class of plug-ins; subclasses register with ``@PLUGINS.register(name)``."""

    position: str = "early"
    # the encoder levels (0-3) an early plug-in reads or replaces; the others are handed to the
    # head's per-level projection as soon as they are encoded (inference: smaller maps held)
    token_levels: tuple[int, ...] = (0, 1, 2, 3)

    def forward(self, feats: VideoFeatures) -> VideoFeatures:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} does not act on encoder tokens")

    def forward_map(self, x: Tensor, batch: int, frames: int) -> Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not act on head feature maps")
