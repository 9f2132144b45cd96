"""Adapter for official Depth Anything V2 checkpoints (``pretrained.*`` + ``depth_head.*``).

Our encoder is timm's ViT (same block names as DINOv2 except ViT-g's SwiGLU ``w12``/``w3``,
which timm calls ``fc1``/``fc2``); our head uses the official names. Stored but unused, by name:
DINOv2's ``mask_token`` (masked-image training only) and ``refinenet4.resConfUnit1`` (the
deepest fusion block never receives a skip input, so the official forward never runs it).
"""

from __future__ import annotations

from gemdepth.weights.common import KeyAdapter

ENCODER_RULES: list[tuple[str, str]] = [
    (r"^pretrained\.blocks\.(\d+)\.mlp\.w12\.", r"encoder.blocks.\1.mlp.fc1."),
    (r"^pretrained\.blocks\.(\d+)\.mlp\.w3\.", r"encoder.blocks.\1.mlp.fc2."),
    (r"^pretrained\.", "encoder."),
]
ENCODER_UNUSED: list[str] = [r"^pretrained\.mask_token$"]


def head_rules(prefix: str) -> list[tuple[str, str]]:
    """Rules mapping an official DPT head stored under ``prefix`` (``depth_head``/``head``) to ``head.*``."""
    return [(rf"^{prefix}\.", "head.")]


def head_unused(prefix: str) -> list[str]:
    """The official head's never-run parameters (``refinenet4.resConfUnit1``)."""
    return [rf"^{prefix}\.scratch\.refinenet4\.resConfUnit1\."]


def dav2_rules() -> list[tuple[str, str]]:
    return ENCODER_RULES + head_rules("depth_head")


def dav2_unused() -> list[str]:
    return ENCODER_UNUSED + head_unused("depth_head")


def dav2_adapter() -> KeyAdapter:
    """Depth Anything V2 ``DepthAnythingV2.state_dict()`` → our ``dav2`` host."""
    return KeyAdapter("dav2", dav2_rules(), dav2_unused())
