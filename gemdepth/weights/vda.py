"""Adapter for official Video Depth Anything checkpoints (``pretrained.*`` + ``head.*``).

The temporal head keeps the official names, including the 8 persistent ``pe`` buffers of the
motion modules (``…attention_blocks.j.pos_encoder.pe``), which load like parameters. Unused by
name, as for DAv2: ``pretrained.mask_token`` and ``head.scratch.refinenet4.resConfUnit1.*``.
"""

from __future__ import annotations

from gemdepth.weights.common import KeyAdapter
from gemdepth.weights.dav2 import ENCODER_RULES, ENCODER_UNUSED, head_rules, head_unused


def vda_rules() -> list[tuple[str, str]]:
    return ENCODER_RULES + head_rules("head")


def vda_unused() -> list[str]:
    return ENCODER_UNUSED + head_unused("head")


def vda_adapter() -> KeyAdapter:
    """Video Depth Anything ``VideoDepthAnything.state_dict()`` → our ``vda`` host."""
    return KeyAdapter("vda", vda_rules(), vda_unused())
