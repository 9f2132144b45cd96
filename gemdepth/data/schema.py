"""The clip schema shared by shards, converters, the synthetic corpus, the DataModule and eval.

A clip is a dict (see ``../shared/design.md`` §4 and INTERFACES.md):

* ``rgb`` uint8 ``(T, H, W, 3)``;
* ``depth`` float32 ``(T, H, W)``: metres (0 = invalid) or relative disparity when
  ``meta["depth_kind"] == "relative-disparity"``;
* ``intrinsics`` float32 ``(T, 3, 3)`` in pixels of the stored image;
* ``extrinsics`` float32 ``(T, 4, 4)`` world-to-camera OpenCV, or ``None`` for pose-free clips;
* optional ``sky`` / ``valid`` bool ``(T, H, W)``;
* ``meta`` dict with at least :data:`REQUIRED_META`.

:func:`validate_clip` checks all of it and raises :class:`ClipError` naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

__all__ = [
    "ClipError",
    "DEPTH_KINDS",
    "REQUIRED_META",
    "ARRAY_FIELDS",
    "MASK_FIELDS",
    "FORMAT_VERSION",
    "KEY_SEPARATOR",
    "FLOAT16_MAX",
    "PER_FRAME_META",
    "sanitise_name",
    "clip_key",
    "validate_clip",
]

#: Schema version written into every ``meta.json`` and ``index.json``.
FORMAT_VERSION = 1
#: Allowed values of ``meta["depth_kind"]``.
DEPTH_KINDS = ("metric", "relative-disparity")
#: Keys every clip's ``meta`` must carry.
REQUIRED_META = (
    "corpus",
    "sequence",
    "frame_indices",
    "depth_kind",
    "has_pose",
    "licence",
    "image_size",
)
#: Array fields every clip carries (``extrinsics`` may be ``None``).
ARRAY_FIELDS = ("rgb", "depth", "intrinsics", "extrinsics")
#: Optional per-frame boolean masks.
MASK_FIELDS = ("sky", "valid")
#: Separator between corpus, sequence and first frame index in a sample key.
KEY_SEPARATOR = "__"
#: Meta keys holding one entry per frame; ``read_sequences`` concatenates them across clips.
#: A clip may name more in ``meta["per_frame_keys"]``.
PER_FRAME_META = ("frame_indices", "timestamps", "frame_names")
#: Largest finite float16: stored depth saturates here (far beyond any truncation distance).
FLOAT16_MAX = float(np.finfo(np.float16).max)

_ROTATION_TOL = 1e-3


class ClipError(ValueError):
    """A clip breaks the schema; ``field`` names the offending entry (e.g. ``"depth"``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def sanitise_name(name: str) -> str:
    """A key-safe form of a corpus or sequence name: ``[A-Za-z0-9_-]`` only, no ``__``, no dots.

    Slashes, dots, spaces and other characters become ``-``; runs of underscores collapse to
    one so the ``__`` separator in keys stays unambiguous.
    """
    out = re.sub(r"[^A-Za-z0-9_-]", "-", str(name))
    out = re.sub(r"_{2,}", "_", out).strip("-")
    if not out:
        raise ClipError(f"name {name!r} has no key-safe characters", field="meta.sequence")
    return out


def clip_key(corpus: str, sequence: str, first_frame: int) -> str:
    """Sample key ``<corpus>__<sequence>__<first frame index>`` (sanitised, no dots)."""
    return KEY_SEPARATOR.join([sanitise_name(corpus), sanitise_name(sequence), str(int(first_frame))])


def _fail(field: str, message: str) -> ClipError:
    return ClipError(f"clip field {field!r}: {message}", field=field)


def _check_array(clip: dict, field: str, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    value = clip[field]
    if not isinstance(value, np.ndarray):
        raise _fail(field, f"expected a numpy array, got {type(value).__name__} "
                           "(convert tensors with .numpy())")
    if value.dtype != dtype:
        raise _fail(field, f"expected dtype {np.dtype(dtype).name}, got {value.dtype.name} "
                           f"(cast with .astype(np.{np.dtype(dtype).name}))")
    want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise _fail(field, f"expected shape {want}, got {tuple(value.shape)}")
    return value


def _check_meta(meta: Any, t: int, h: int, w: int) -> None:
    if not isinstance(meta, dict):
        raise _fail("meta", f"expected a dict, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise _fail(f"meta.{missing[0]}", f"missing required meta keys {missing}")
    for key in ("corpus", "sequence", "licence"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise _fail(f"meta.{key}", f"expected a non-empty string, got {meta[key]!r}")
    if meta["depth_kind"] not in DEPTH_KINDS:
        raise _fail("meta.depth_kind", f"expected one of {DEPTH_KINDS}, got {meta['depth_kind']!r}")
    if not isinstance(meta["has_pose"], (bool, np.bool_)):
        raise _fail("meta.has_pose", f"expected a bool, got {meta['has_pose']!r}")
    idx = meta["frame_indices"]
    if (not isinstance(idx, (list, tuple)) or len(idx) != t
            or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx)):
        raise _fail("meta.frame_indices", f"expected a list of {t} ints, got {idx!r}")
    if any(b <= a for a, b in zip(idx[:-1], idx[1:])):
        raise _fail("meta.frame_indices", f"must be strictly increasing, got {list(idx)}")
    size = meta["image_size"]
    if not isinstance(size, (list, tuple)) or [int(s) for s in size] != [h, w]:
        raise _fail("meta.image_size", f"expected [H, W] = [{h}, {w}] (the rgb shape), got {size!r}")
    try:
        json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise _fail("meta", f"not JSON-serialisable: {exc}") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def validate_clip(clip: Any, *, check_values: bool = True) -> None:
    """Check a clip dict against the schema; raise :class:`ClipError` naming the bad field.

    ``check_values=False`` skips the per-pixel depth checks (for callers that check the
    pixels they actually use, after cropping).

    Checks presence, dtypes and shapes of every array, finite non-negative depth, pinhole
    intrinsics with positive focal lengths, rigid world-to-camera extrinsics (orthonormal,
    det +1, bottom row ``0 0 0 1``) present exactly when ``meta["has_pose"]``, optional masks,
    and the required meta keys (frame indices increasing, image size matching ``rgb``).
    """
    if not isinstance(clip, dict):
        raise ClipError(f"a clip must be a dict, got {type(clip).__name__}", field=None)
    for field in (*ARRAY_FIELDS, "meta"):
        if field not in clip:
            raise _fail(field, "missing (every clip needs rgb, depth, intrinsics, extrinsics "
                               "(None when pose-free) and meta)")
    rgb = _check_array(clip, "rgb", np.uint8, (None, None, None, 3))
    t, h, w = rgb.shape[:3]
    if t < 1 or h < 1 or w < 1:
        raise _fail("rgb", f"empty clip of shape {tuple(rgb.shape)}")
    depth = _check_array(clip, "depth", np.float32, (t, h, w))
    if check_values and not np.isfinite(depth).all():
        bad = int((~np.isfinite(depth)).sum())
        raise _fail("depth", f"{bad} NaN/inf values (mark invalid pixels with 0)")
    if check_values and (depth < 0).any():
        raise _fail("depth", f"negative values (min {float(depth.min())}); invalid pixels are 0")
    intr = _check_array(clip, "intrinsics", np.float32, (t, 3, 3))
    if not np.isfinite(intr).all():
        raise _fail("intrinsics", "NaN/inf values")
    if (intr[:, 0, 0] <= 0).any() or (intr[:, 1, 1] <= 0).any():
        raise _fail("intrinsics", "focal lengths fx, fy must be positive")
    if not np.allclose(intr[:, 2], [0.0, 0.0, 1.0]) or not np.allclose(intr[:, 1, 0], 0.0):
        raise _fail("intrinsics", "expected pinhole matrices [[fx, s, cx], [0, fy, cy], [0, 0, 1]]")
    meta = clip["meta"]
    _check_meta(meta, t, h, w)
    extr = clip["extrinsics"]
    if meta["has_pose"]:
        if extr is None:
            raise _fail("extrinsics", "None but meta.has_pose is true (a pose corpus needs poses)")
        extr = _check_array(clip, "extrinsics", np.float32, (t, 4, 4))
        if not np.isfinite(extr).all():
            raise _fail("extrinsics", "NaN/inf values")
        if not np.allclose(extr[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
            raise _fail("extrinsics", "bottom row must be [0, 0, 0, 1]")
        rot = extr[:, :3, :3].astype(np.float64)
        ortho = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max()
        det = np.linalg.det(rot)
        if ortho > _ROTATION_TOL or (np.abs(det - 1.0) > _ROTATION_TOL).any():
            raise _fail("extrinsics", f"rotation is not proper orthonormal (|RRᵀ-I| = {ortho:.2g}, "
                                      f"det in [{det.min():.4f}, {det.max():.4f}])")
    elif extr is not None:
        raise _fail("extrinsics", "must be None when meta.has_pose is false")
    for field in MASK_FIELDS:
        if clip.get(field) is not None:
            _check_array(clip, field, np.bool_, (t, h, w))
