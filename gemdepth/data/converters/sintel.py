"""MPI Sintel (Butler et al., ECCV 2012) with the Sintel depth/camera release.

ROOT is the ``training`` folder (or its parent) holding::

    final/<sequence>/frame_0001.png          (or clean/, chosen by pass_name=)
    depth/<sequence>/frame_0001.dpt          float32 z-depth: header float 202021.25,
                                              int32 width, int32 height, then H·W floats
    camdata_left/<sequence>/frame_0001.cam   header float 202021.25, then float64 3×3
                                              intrinsics M and float64 3×4 extrinsics N with
                                              x = M·N·X: world-to-camera, OpenCV axes

The depth and camera files come in a separate archive; ``depth_root=`` points at its
``training`` folder when it is not merged into ROOT. The sky has finite, very large depth;
``max_depth`` (default none) drops depth beyond it. Frame indices are the file numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gemdepth.data.converters._common import (
    ConverterError,
    FrameError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    natural_key,
    note_invalid_depth,
    read_rgb,
    require_dir,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "TAG_FLOAT", "read_dpt", "read_cam", "iter_clips"]

CORPUS = "sintel"
#: ``-o key=value`` options of ``gemdepth data convert sintel`` and their meaning.
OPTIONS: dict[str, str] = {
    'pass_name': 'final or clean rendering pass',
    'depth_root': 'folder of the separate depth/camera release (default: ROOT)',
    'max_depth': 'depth (m) beyond which pixels are invalid (default: keep all)',
}
LICENCE = "research-only (MPI Sintel terms)"
LAYOUT = ("training/{final|clean}/<seq>/frame_<nnnn>.png, training/depth/<seq>/frame_<nnnn>.dpt, "
          "training/camdata_left/<seq>/frame_<nnnn>.cam")
TAG_FLOAT = np.float32(202021.25)


def read_dpt(path: Path) -> np.ndarray:
    """float32 ``(H, W)`` depth of a Sintel ``.dpt`` file (little-endian, tag checked)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FrameError(f"{path}: unreadable ({exc})") from exc
    if len(raw) < 12 or np.frombuffer(raw[:4], "<f4")[0] != TAG_FLOAT:
        raise FrameError(f"{path}: not a Sintel .dpt file (tag 202021.25 missing)")
    w, h = (int(v) for v in np.frombuffer(raw[4:12], "<i4"))
    if w <= 0 or h <= 0 or len(raw) != 12 + 4 * w * h:
        raise FrameError(f"{path}: header says {w}x{h} but the file has {len(raw) - 12} data "
                         "bytes (truncated?)")
    return np.frombuffer(raw[12:], "<f4").reshape(h, w).astype(np.float32)


def read_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(M (3, 3) intrinsics, N (4, 4) world-to-camera)`` of a Sintel ``.cam`` file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FrameError(f"{path}: unreadable ({exc})") from exc
    if len(raw) < 4 + 8 * 21 or np.frombuffer(raw[:4], "<f4")[0] != TAG_FLOAT:
        raise FrameError(f"{path}: not a Sintel .cam file (tag or size wrong)")
    vals = np.frombuffer(raw[4:4 + 8 * 21], "<f8")
    m = vals[:9].reshape(3, 3).copy()
    n = np.eye(4)
    n[:3] = vals[9:].reshape(3, 4)
    return m, n


def _training_dir(root: Path, needed: tuple[str, ...]) -> Path:
    for cand in (root, root / "training"):
        if all((cand / n).is_dir() for n in needed):
            return cand
    missing = [n for n in needed
               if not (root / n).is_dir() and not (root / "training" / n).is_dir()]
    raise ConverterError(f"{root} lacks {missing}; expected layout: {LAYOUT}")


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               pass_name: str = "final", depth_root: Path | None = None,
               max_depth: float | None = None) -> Iterator[dict]:
    """Clips of every Sintel training sequence (see the module docstring)."""
    if pass_name not in ("final", "clean"):
        raise ConverterError(f"pass_name must be 'final' or 'clean', got {pass_name!r}")
    root = as_path(root)
    img_dir = _training_dir(root, (pass_name,)) / pass_name
    droot = _training_dir(as_path(depth_root) if depth_root else root, ("depth", "camdata_left"))
    seqs = sorted((p for p in img_dir.iterdir() if p.is_dir()), key=natural_key)
    if not seqs:
        raise ConverterError(f"no sequence folders in {img_dir}; expected layout: {LAYOUT}")
    for s in seqs:
        require_dir(droot / "depth" / s.name, LAYOUT)
        require_dir(droot / "camdata_left" / s.name, LAYOUT)
    skips = SkipLog(CORPUS)

    def load(ref: FrameRef) -> LoadedFrame:
        rgb = read_rgb(ref.paths["rgb"])
        depth = read_dpt(ref.paths["depth"])
        m, n = read_cam(ref.paths["cam"])
        note_invalid_depth(depth)
        bad = ~np.isfinite(depth) | (depth <= 0)
        if max_depth is not None:
            bad |= depth > max_depth
        depth = np.where(bad, 0.0, depth).astype(np.float32)
        return LoadedFrame(rgb=rgb, depth=depth, intrinsics=m, extrinsics=n)

    def generate() -> Iterator[dict]:
        for seq in seqs:
            refs = []
            for img in sorted(seq.glob("frame_*.png"), key=natural_key):
                stem = img.stem
                refs.append(FrameRef(
                    index=int(stem.split("_")[-1]),
                    paths={"rgb": img, "depth": droot / "depth" / seq.name / f"{stem}.dpt",
                           "cam": droot / "camdata_left" / seq.name / f"{stem}.cam"}))
            yield from build_clips(
                refs, corpus=CORPUS, sequence=seq.name, clip_length=clip_length, stride=stride,
                load=load, skips=skips, licence=LICENCE,
                meta={"pass": pass_name,
                      "sky_handling": (f"depth > {max_depth} -> 0" if max_depth is not None
                                       else "none (sky keeps its large finite depth)")},
            )
        skips.summary()

    return generate()
