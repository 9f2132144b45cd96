"""Adapter for the official GemDepth checkpoint (``gemdepth.pth``) and partial-load allow-lists.

The official ``GemDepth`` state dict is Video Depth Anything's (``pretrained.*``, ``head.*``)
plus the plug-in modules at top level. This module maps every key:

=========================================  ==============================================
official key                               ours
=========================================  ==============================================
``pretrained.*``, ``head.*``               the VDA rules (:func:`gemdepth.weights.vda.vda_rules`)
``camera_token``, ``register_token``       ``plugins.gem.camera_token`` / ``.register_token``
``frame_blocks.0.*``, ``global_blocks.0.*`` ``plugins.gem.frame_blocks.0.*`` / ``global_blocks.0.*``
``camera_head.*``                          ``plugins.gem.camera_head.*``
``cam_{rot,trans,trans_scale}_encoder.*``  ``plugins.gem.cam_…_encoder.{mlp.0,2,4,6; norm}``
``dec_norm.*``, ``spatial_blocks.*``,      ``plugins.astt.*``
``time_blocks.*``
=========================================  ==============================================

Stored but never used by the official forward, accounted for by name (:func:`gemdepth_unused`,
plus VDA's ``pretrained.mask_token`` and ``head.scratch.refinenet4.resConfUnit1.*``):
``frame_blocks.1.*`` and ``global_blocks.1.*`` (built with ``depth1=2``, only block 0 runs),
the top-level ``pos_encoder.pe`` buffer, the head's ``proj.*`` linears and the motion modules'
``temporal_transformer.layer_norm`` / ``fusion_gate1`` (GemDepth's copy of the temporal head
builds them, its forward does not call them). The non-persistent ``image_idx_emb`` buffer is
not in the checkpoint; ASTT computes the same table for any clip length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from gemdepth.weights.common import KeyAdapter

__all__ = [
    "PLUGIN_NAMES",
    "astt_rules",
    "gem_rules",
    "gemdepth_adapter",
    "gemdepth_unused",
    "plugin_allow_missing",
    "plugin_rules",
    "plugin_state_dict",
]

PLUGIN_NAMES = ("gem", "astt")

_POSE_ENCODERS = r"(cam_rot_encoder|cam_trans_encoder|cam_trans_scale_encoder)"
_WB = r"(weight|bias)"


def gem_rules(prefix: str = "plugins.gem.") -> list[tuple[str, str]]:
    """``(regex, replacement)`` rules from official GEM keys to GEM's own names under ``prefix``."""
    return [
        (r"^(camera_token|register_token)$", prefix + r"\1"),
        (r"^(frame_blocks|global_blocks)\.0\.(.+)$", prefix + r"\1.0.\2"),
        (r"^camera_head\.(.+)$", prefix + r"camera_head.\1"),
        # UniCeption's nested Sequential → one flat Sequential (Linear at 0, 2, 4, 6)
        (rf"^{_POSE_ENCODERS}\.encoder\.0\.0\.0\.0\.{_WB}$", prefix + r"\1.mlp.0.\2"),
        (rf"^{_POSE_ENCODERS}\.encoder\.0\.0\.1\.{_WB}$", prefix + r"\1.mlp.2.\2"),
        (rf"^{_POSE_ENCODERS}\.encoder\.0\.1\.{_WB}$", prefix + r"\1.mlp.4.\2"),
        (rf"^{_POSE_ENCODERS}\.encoder\.1\.{_WB}$", prefix + r"\1.mlp.6.\2"),
        (rf"^{_POSE_ENCODERS}\.norm_layer\.{_WB}$", prefix + r"\1.norm.\2"),
    ]


def astt_rules(prefix: str = "plugins.astt.") -> list[tuple[str, str]]:
    """``(regex, replacement)`` rules from official ASTT keys to ASTT's own names under ``prefix``."""
    return [(r"^(dec_norm|spatial_blocks|time_blocks)\.(.+)$", prefix + r"\1.\2")]


def plugin_rules(name: str, prefix: str | None = None) -> list[tuple[str, str]]:
    """The rules of plug-in ``name`` (``gem`` or ``astt``); ``prefix`` defaults to ``plugins.<name>.``."""
    prefix = f"plugins.{name}." if prefix is None else prefix
    if name == "gem":
        return gem_rules(prefix)
    if name == "astt":
        return astt_rules(prefix)
    raise KeyError(f"no official GemDepth weights for plug-in {name!r}; known: {PLUGIN_NAMES}")


def gemdepth_unused() -> list[str]:
    """Regexes of official keys that are stored but never used (see the module docstring)."""
    return [
        r"^(frame_blocks|global_blocks)\.[1-9][0-9]*\.",
        r"^pos_encoder\.pe$",
        r"^head\.proj\.[0-9]+\.(weight|bias)$",
        r"^head\.motion_modules\.[0-9]+\.temporal_transformer\.(layer_norm|fusion_gate1)\.",
    ]


def gemdepth_adapter() -> KeyAdapter:
    """The strict adapter for official GemDepth checkpoints (every key mapped or named unused)."""
    from gemdepth.weights.common import KeyAdapter
    from gemdepth.weights.vda import vda_rules, vda_unused

    return KeyAdapter(
        "GemDepth",
        rules=[*gem_rules(), *astt_rules(), *vda_rules()],
        unused=[*gemdepth_unused(), *vda_unused()],
    )


def plugin_allow_missing(names: Iterable[str] = PLUGIN_NAMES) -> list[str]:
    """Allow-list for partial loads: the plug-in keys a DAv2/VDA checkpoint cannot provide.

    Loading Depth Anything V2 weights into GemDepth-DAv2, or Video Depth Anything weights into
    GemDepth-VDA, leaves exactly these modules at their fresh initialisation.
    """
    return [rf"^plugins\.{re.escape(n)}\." for n in names]


def plugin_state_dict(official: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The official state dict's entries of one plug-in, renamed to the plug-in's own names.

    Lets a bare :class:`~gemdepth.models.plugins.gem.GEM` or
    :class:`~gemdepth.models.plugins.astt.ASTT` load official weights with
    ``load_state_dict(..., strict=True)`` (tests do this; so can users who only want GEM).
    """
    rules = [(re.compile(p), r) for p, r in plugin_rules(name, prefix="")]
    out: dict[str, Any] = {}
    for key, value in official.items():
        for pattern, repl in rules:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
    return out
