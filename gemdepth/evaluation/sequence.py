"""One stored sequence → the frames, crop and ground truth a protocol evaluates (pure NumPy).

:func:`prepare_sequence` takes a sequence dict of :func:`gemdepth.data.read_sequences` and a
:class:`~gemdepth.evaluation.protocol.Protocol` and returns the evaluation sample: the sampled
frames, the model's input region of the RGB, the scored region of depth/validity, intrinsics
shifted to that region, and the boxes that relate the two (so the runner can map the
prediction onto the ground truth). Ground-truth quirks (Sintel's uint16 storage) are applied
here, behind their flags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemdepth.evaluation.protocol import Box, Protocol

__all__ = ["SequenceError", "prepare_sequence", "sintel_reference_depth", "SINTEL_VDA_FACTOR"]

log = logging.getLogger("gemdepth.evaluation")

#: Depth factor the VDA benchmark's json gives Sintel (its PNGs hold uint16 metres).
SINTEL_VDA_FACTOR = 65535.0 / 650.0


class SequenceError(ValueError):
    """A stored sequence cannot be evaluated under a protocol (wrong corpus, depth kind, …)."""


def sintel_reference_depth(depth: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Sintel depth as the reference extraction stores it: ``depth.astype(np.uint16) / factor``.

    The float → uint16 cast truncates toward zero; values from 65536 wrap modulo 2¹⁶ and values
    from 2³¹ become 0 (x86 NumPy's cast, measured); non-finite values become 0. Depth below
    1 m turns into 0, which the protocol treats as invalid.
    """
    d = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(d) & (d >= 0)
    whole = np.floor(np.where(finite, d, 0.0))
    wrapped = np.where(whole < 2.0**31, np.mod(whole, 65536.0), 0.0)
    return (wrapped / factor).astype(np.float32)


def _full_box(height: int, width: int) -> Box:
    return Box(0, 0, height, width)


def _boxes(protocol: Protocol, height: int, width: int) -> tuple[Box, Box]:
    """``(input box, ground-truth box)`` in source-frame pixels."""
    full = _full_box(height, width)
    gt_box = protocol.crop.box(height, width) if protocol.crop is not None else full
    if protocol.quirk("kitti_even_crop_resize"):
        return Box(0, 0, height // 2 * 2, width // 2 * 2), gt_box
    return (gt_box if protocol.crop_input else full), gt_box


def _check(seq: Mapping[str, Any], protocol: Protocol) -> None:
    meta = seq.get("meta", {})
    name = meta.get("sequence", "?")
    corpus = meta.get("corpus")
    if corpus != protocol.dataset:
        raise SequenceError(
            f"sequence {name!r} belongs to corpus {corpus!r} but protocol {protocol.name!r} evaluates "
            f"{protocol.dataset!r}; point data.path at the {protocol.dataset} shards (or set data.dataset)"
        )
    if meta.get("depth_kind", "metric") != "metric":
        raise SequenceError(
            f"sequence {name!r} of {corpus!r} has depth kind {meta.get('depth_kind')!r}; the benchmark needs "
            "metric ground-truth depth"
        )
    for key, want in protocol.expect_meta.items():
        have = meta.get(key)
        if have != want:
            raise SequenceError(
                f"sequence {name!r} of {corpus!r} was converted with {key}={have!r} but protocol "
                f"{protocol.name!r} expects {key}={want!r}; re-convert it (e.g. `gemdepth data convert "
                f"{corpus} ROOT OUT -o {'pass_name' if key == 'pass' else key}={want}`) or set "
                "data.expect_meta to {}"
            )


def prepare_sequence(seq: Mapping[str, Any], protocol: Protocol, *, limit: int | None = None) -> dict[str, Any]:
    """The evaluation sample of one stored sequence (see the module docstring).

    Args:
        seq: a sequence dict (``rgb``, ``depth``, ``intrinsics``, ``extrinsics``, optional
            ``valid``, ``meta`` with ``frame_indices``).
        protocol: the protocol.
        limit: keep at most this many of the sampled frames (a length sweep).

    Returns:
        dict with ``rgb`` uint8 ``(T, h, w, 3)`` (the model's input region), ``depth`` float32
        ``(T, H, W)`` metres and ``valid`` bool ``(T, H, W)`` (the scored region),
        ``intrinsics`` float32 ``(T, 3, 3)`` of the scored region, ``extrinsics`` ``(T, 4, 4)``
        or ``None``, ``name``, ``corpus``, ``frame_indices``, ``input_box`` and ``gt_box``
        (``[top, left, height, width]`` in source pixels), ``frames`` (T), ``requested_frames``
        (what the protocol asked for, ``None`` = all) and ``stored_frames``.

    Raises:
        SequenceError: wrong corpus / depth kind / conversion options, or no frame selected.
    """
    _check(seq, protocol)
    meta = seq["meta"]
    name = str(meta["sequence"])
    rgb_all = np.asarray(seq["rgb"])
    depth_all = np.asarray(seq["depth"])
    stored, height, width = depth_all.shape
    indices = list(meta.get("frame_indices", range(stored)))
    if len(indices) != stored:
        raise SequenceError(f"sequence {name!r}: {len(indices)} frame indices for {stored} frames")
    pos = protocol.sampling.select(indices, limit)
    if pos.size == 0:
        raise SequenceError(
            f"sequence {name!r}: no frame selected by protocol {protocol.name!r} "
            f"(sampling {protocol.sampling}; stored frame indices {indices[0]}..{indices[-1]})"
        )
    in_box, gt_box = _boxes(protocol, height, width)
    rows_in, cols_in = in_box.slices
    rows_gt, cols_gt = gt_box.slices

    depth = depth_all[pos][:, rows_gt, cols_gt].astype(np.float32, copy=True)
    if protocol.quirk("sintel_uint16_depth"):
        factor = SINTEL_VDA_FACTOR if protocol.quirk("sintel_depth_factor_650") else 1.0
        depth = sintel_reference_depth(depth, factor)
    valid_all = seq.get("valid")
    if valid_all is not None:
        valid = np.asarray(valid_all)[pos][:, rows_gt, cols_gt].astype(bool, copy=True)
    else:
        valid = np.ones(depth.shape, dtype=bool)

    intr = np.asarray(seq["intrinsics"], dtype=np.float32)[pos].copy()
    if not protocol.quirk("tae_uncropped_intrinsics"):
        intr[:, 0, 2] -= gt_box.left
        intr[:, 1, 2] -= gt_box.top
    extr = seq.get("extrinsics")
    extr = None if extr is None else np.asarray(extr, dtype=np.float32)[pos].copy()

    requested = protocol.sampling.requested
    if limit is not None:
        requested = limit if requested is None else min(requested, limit)
    return {
        "rgb": np.ascontiguousarray(rgb_all[pos][:, rows_in, cols_in]),
        "depth": depth,
        "valid": valid,
        "intrinsics": intr,
        "extrinsics": extr,
        "name": name,
        "corpus": str(meta["corpus"]),
        "frame_indices": [int(indices[p]) for p in pos],
        "input_box": in_box.as_list(),
        "gt_box": gt_box.as_list(),
        "frames": int(pos.size),
        "requested_frames": requested,
        "stored_frames": int(stored),
    }
