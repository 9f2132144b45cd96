"""Shared plumbing for the corpus converters: layout errors, counted skips, readers, clipping.

Every converter lists its frames as :class:`FrameRef` records (paths and per-frame camera),
then :func:`build_clips` cuts a sequence into clips and loads each frame through the
converter's own ``load`` function. Corpus quirks stay in the converter modules.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gemdepth.data.schema import clip_key as _clip_key

__all__ = [
    "ConverterError",
    "FrameError",
    "FrameRef",
    "LoadedFrame",
    "SkipLog",
    "require_dir",
    "require_file",
    "read_rgb",
    "read_png16",
    "read_exr",
    "natural_key",
    "build_clips",
    "pose_from_c2w",
    "intrinsics_matrix",
    "as_path",
    "clean_depth",
    "note_invalid_depth",
    "SKIP_SINK",
    "ZEROED_SINK",
    "RESUME_KEYS",
    "parse_floats",
    "parse_names",
]

log = logging.getLogger("gemdepth.data.converters")
#: Where :meth:`SkipLog.summary` also adds its counts (set by ``run_converter``).
SKIP_SINK: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "gemdepth_skip_sink", default=None)
#: Where :meth:`SkipLog.summary` adds its zeroed-depth counts (set by ``run_converter``).
ZEROED_SINK: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "gemdepth_zeroed_sink", default=None)
#: Sample keys already in the output corpus (a resumed conversion): :func:`build_clips` skips
#: those clips without loading their frames (set by ``run_converter``, filled by
#: ``write_corpus`` before it consumes clips).
RESUME_KEYS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "gemdepth_resume_keys", default=None)
#: The :class:`SkipLog` of the sequence being loaded (set by :func:`build_clips` around each
#: ``load`` call), so that module-level loaders can count zeroed depth.
_ACTIVE_SKIPS: contextvars.ContextVar[SkipLog | None] = contextvars.ContextVar(
    "gemdepth_active_skips", default=None)


class ConverterError(ValueError):
    """The ROOT does not look like the corpus (a file or folder is missing or malformed)."""


class FrameError(RuntimeError):
    """One frame cannot be used; the converter skips it and counts ``reason``."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


def as_path(root: Any) -> Path:
    """``root`` as a :class:`Path` that must exist."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ConverterError(f"{path} does not exist")
    return path


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else a :class:`ConverterError` naming it and the layout."""
    if not path.is_dir():
        raise ConverterError(f"missing folder {path}; expected layout: {layout}")
    return path


def require_file(path: Path, layout: str) -> Path:
    """``path`` if it is a file, else a :class:`ConverterError` naming it and the layout."""
    if not path.is_file():
        raise ConverterError(f"missing file {path}; expected layout: {layout}")
    return path


def natural_key(name: str | Path) -> list[Any]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


# --------------------------------------------------------------------------- options
def parse_floats(value: Any, count: int, name: str) -> tuple[float, ...] | None:
    """``count`` floats from a sequence or a ``"a,b,c"`` string (CLI options); None passes."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise ConverterError(f"{name} must be {count} numbers, got {value!r}") from exc
    if len(out) != count:
        raise ConverterError(f"{name} must be {count} numbers, got {value!r}")
    return out


def parse_names(value: Any) -> tuple[str, ...] | None:
    """A tuple of names from a sequence, a single value or a ``"a,b"`` string; None passes."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "all", "")):
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (int, float)):
        return (str(int(value)),)
    return tuple(str(v) for v in value)


# --------------------------------------------------------------------------- readers
def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB of an image file (grey and RGBA are converted)."""
    try:
        with Image.open(path) as im:
            if im.mode == "I;16" or im.mode.startswith("I"):
                raise FrameError(f"{path}: a 16-bit image where colour was expected")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FrameError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise FrameError(f"{path}: unreadable image ({exc})") from exc


def read_png16(path: Path) -> np.ndarray:
    """uint16 ``(H, W)`` of a 16-bit single-channel PNG."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise FrameError(f"{path}: unreadable depth PNG ({exc})") from exc
    if arr.ndim != 2:
        raise FrameError(f"{path}: expected a single-channel 16-bit PNG, got shape {arr.shape}")
    if arr.dtype not in (np.uint16, np.int32, np.uint8):
        raise FrameError(f"{path}: expected 16-bit PNG data, got {arr.dtype}")
    return arr.astype(np.uint16)


def read_exr(path: Path, channel: str | None = None) -> np.ndarray:
    """float32 ``(H, W)`` of one channel of an OpenEXR file (``openexr`` package).

    Without ``channel`` a single-channel file's channel is used, else ``Z``, ``Y``, ``R`` or
    the first of ``RGB`` in that order of preference.
    """
    try:
        import OpenEXR
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConverterError(
            "reading .exr files needs the 'openexr' package: pip install openexr "
            "(or pip install 'gemdepth[data]')"
        ) from exc
    try:
        with OpenEXR.File(str(path)) as f:
            chans = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
    except Exception as exc:
        raise FrameError(f"{path}: unreadable EXR ({exc})") from exc
    if channel is not None:
        if channel not in chans:
            raise FrameError(f"{path}: no channel {channel!r} (has {sorted(chans)})")
        arr = chans[channel]
    elif len(chans) == 1:
        arr = next(iter(chans.values()))
    else:
        for name in ("Z", "Y", "R", "RGB", "RGBA"):
            if name in chans:
                arr = chans[name]
                break
        else:
            arr = chans[sorted(chans)[0]]
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.float32)


# --------------------------------------------------------------------------- skips
@dataclass
class SkipLog:
    """Counts skipped frames per reason and logs each one (a converter never skips silently),
    and counts depth pixels zeroed because they were non-finite or negative (logged in the
    run's summary)."""

    corpus: str
    counts: Counter = field(default_factory=Counter)
    zeroed: Counter = field(default_factory=Counter)

    def skip(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        log.warning("%s: skipped a frame (%s): %s", self.corpus, reason, detail)

    def zero(self, non_finite: int, negative: int) -> None:
        """Count one frame's depth pixels set to 0 (invalid) for being non-finite/negative."""
        if non_finite or negative:
            self.zeroed["non-finite pixels"] += int(non_finite)
            self.zeroed["negative pixels"] += int(negative)
            self.zeroed["frames"] += 1

    def summary(self) -> dict[str, int]:
        sink = SKIP_SINK.get()
        if sink is not None:
            for reason, n in self.counts.items():
                sink[reason] = sink.get(reason, 0) + n
        zsink = ZEROED_SINK.get()
        if zsink is not None:
            for what, n in self.zeroed.items():
                zsink[what] = zsink.get(what, 0) + n
        if self.counts:
            log.warning("%s: skipped %d frame(s): %s", self.corpus, sum(self.counts.values()),
                        dict(self.counts))
        if self.zeroed:
            log.warning("%s: set %d non-finite and %d negative depth pixels to 0 (invalid) in %d "
                        "frame(s)", self.corpus, self.zeroed["non-finite pixels"],
                        self.zeroed["negative pixels"], self.zeroed["frames"])
        return dict(self.counts)


def note_invalid_depth(depth: np.ndarray, exclude: np.ndarray | None = None) -> None:
    """Count the non-finite and negative pixels of a raw depth map that the caller is about to
    set to 0, in the run's summary (``exclude``: pixels that are deliberately non-finite,
    e.g. sky stored as +inf). Counted in the :class:`SkipLog` of the frame being loaded."""
    skips = _ACTIVE_SKIPS.get()
    if skips is None:
        return
    d = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(d)
        non_finite, negative = ~finite, finite & (d < 0)
    if exclude is not None:
        non_finite &= ~exclude
        negative &= ~exclude
    skips.zero(int(non_finite.sum()), int(negative.sum()))


# --------------------------------------------------------------------------- cameras
def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """float64 ``(3, 3)`` pinhole matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def pose_from_c2w(c2w: np.ndarray) -> np.ndarray:
    """World-to-camera ``(..., 4, 4)`` of camera-to-world matrices (closed-form rigid inverse)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    rot = c2w[..., :3, :3]
    trans = c2w[..., :3, 3]
    out = np.zeros_like(c2w)
    rt = np.swapaxes(rot, -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ trans[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


# --------------------------------------------------------------------------- clips
@dataclass
class FrameRef:
    """One frame of a sequence before loading: its index, files and camera (if known)."""

    index: int
    paths: dict[str, Path]
    intrinsics: np.ndarray | None = None
    extrinsics: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedFrame:
    """One loaded frame: RGB, depth (metres or relative disparity), optional sky mask."""

    rgb: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray | None = None
    sky: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _chunks(frames: Sequence[FrameRef], clip_length: int, stride: int) -> Iterator[list[FrameRef]]:
    picked = list(frames)[::stride]
    for start in range(0, len(picked), clip_length):
        yield picked[start:start + clip_length]


def build_clips(
    frames: Sequence[FrameRef],
    *,
    corpus: str,
    sequence: str,
    clip_length: int,
    stride: int,
    load: Callable[[FrameRef], LoadedFrame],
    skips: SkipLog,
    depth_kind: str = "metric",
    has_pose: bool = True,
    licence: str,
    meta: dict[str, Any] | None = None,
    per_frame_meta: Iterable[str] = (),
) -> Iterator[dict]:
    """Clip dicts of one sequence: every ``stride``-th frame, cut into ``clip_length`` chunks.

    Frames whose ``load`` raises :class:`FrameError` are skipped (counted in ``skips`` with a
    log line); a frame whose size differs from the clip's first frame is skipped the same way.
    The last clip may be shorter than ``clip_length`` (evaluation needs every frame). Keys
    named in ``per_frame_meta`` are collected from ``LoadedFrame.extra`` into ``meta`` lists.
    """
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    per_frame = list(per_frame_meta)
    done = RESUME_KEYS.get()
    for chunk in _chunks(frames, clip_length, stride):
        if done and _clip_key(corpus, sequence, chunk[0].index) in done:
            continue  # already in the corpus being resumed: not loaded again
        loaded: list[tuple[FrameRef, LoadedFrame]] = []
        for ref in chunk:
            token = _ACTIVE_SKIPS.set(skips)
            try:
                fr = load(ref)
                bad = _frame_problem(fr, has_pose)
            except FrameError as exc:
                skips.skip(exc.reason, str(exc))
                continue
            finally:
                _ACTIVE_SKIPS.reset(token)
            if bad is None and loaded and fr.rgb.shape != loaded[0][1].rgb.shape:
                first = loaded[0][1].rgb.shape[:2]
                bad = f"size {fr.rgb.shape[:2]} differs from the clip's {first}"
            if bad is not None:
                skips.skip("invalid frame", f"{sequence} frame {ref.index}: {bad}")
                continue
            loaded.append((ref, fr))
        if not loaded:
            continue
        clip: dict[str, Any] = {
            "rgb": np.stack([f.rgb for _, f in loaded]).astype(np.uint8),
            "depth": np.stack([f.depth for _, f in loaded]).astype(np.float32),
            "intrinsics": np.stack([f.intrinsics for _, f in loaded]).astype(np.float32),
            "extrinsics": (np.stack([f.extrinsics for _, f in loaded]).astype(np.float32)
                           if has_pose else None),
        }
        if any(f.sky is not None for _, f in loaded):
            clip["sky"] = np.stack([
                f.sky if f.sky is not None else np.zeros(f.depth.shape, bool) for _, f in loaded
            ]).astype(bool)
        h, w = clip["rgb"].shape[1:3]
        m: dict[str, Any] = {
            "corpus": corpus,
            "sequence": sequence,
            "frame_indices": [int(r.index) for r, _ in loaded],
            "depth_kind": depth_kind,
            "has_pose": bool(has_pose),
            "licence": licence,
            "image_size": [int(h), int(w)],
        }
        m.update(meta or {})
        for key in per_frame:
            m[key] = [f.extra.get(key) for _, f in loaded]
        clip["meta"] = m
        yield clip


#: Rotations off orthonormal by at most this are projected onto SO(3) (text files print
#: poses to a few digits); worse ones make the frame's pose invalid.
ROTATION_REPAIR_TOL = 1e-2


def _frame_problem(fr: LoadedFrame, has_pose: bool) -> str | None:
    """Why a loaded frame is unusable, or None; repairs harmless deviations in place.

    A safety net behind each converter's own handling: non-finite or negative depth becomes
    0 (invalid), a pose's rotation that is orthonormal only to printed precision is projected
    onto SO(3) and its bottom row set to ``0 0 0 1``. Anything else is reported.
    """
    if fr.rgb.ndim != 3 or fr.rgb.shape[2] != 3:
        return f"rgb has shape {fr.rgb.shape}"
    if fr.depth.shape != fr.rgb.shape[:2]:
        return f"depth {fr.depth.shape} and rgb {fr.rgb.shape[:2]} differ in size"
    fr.depth = clean_depth(fr.depth)
    k = np.asarray(fr.intrinsics, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        return f"intrinsics are not a pinhole matrix with positive focal lengths: {k.tolist()}"
    if has_pose:
        if fr.extrinsics is None:
            return "no pose for this frame"
        e = np.array(fr.extrinsics, dtype=np.float64)
        if e.shape != (4, 4) or not np.isfinite(e).all():
            return "pose is not a finite 4x4 matrix"
        rot = e[:3, :3]
        off = np.abs(rot @ rot.T - np.eye(3)).max()
        if off > ROTATION_REPAIR_TOL or np.linalg.det(rot) <= 0:
            return "pose rotation is not a rotation (not orthonormal or det <= 0)"
        u, _, vt = np.linalg.svd(rot)
        e[:3, :3] = u @ vt
        e[3] = [0.0, 0.0, 0.0, 1.0]
        fr.extrinsics = e
    return None


def clean_depth(depth: np.ndarray, max_valid: float | None = None) -> np.ndarray:
    """float32 depth with non-finite, negative and (optionally) too-far values set to 0; the
    non-finite and negative ones are counted in the run's summary (:func:`note_invalid_depth`)."""
    d = np.asarray(depth, dtype=np.float32).copy()
    note_invalid_depth(d)
    bad = ~np.isfinite(d) | (d < 0)
    if max_valid is not None:
        bad |= d > max_valid
    d[bad] = 0.0
    return d
