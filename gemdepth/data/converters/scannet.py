"""ScanNet (Dai et al., CVPR 2017) as exported by its SensReader tool.

One scene folder (``scene0000_00/``) holds::

    color/<i>.jpg                      colour (1296×968 as exported, or already 640×480)
    depth/<i>.png                      16-bit depth in millimetres, 640×480, 0 = invalid
    pose/<i>.txt                       4×4 camera-to-world (OpenCV axes); invalid poses are
                                       written as -inf / nan and those frames are skipped
    intrinsic/intrinsic_depth.txt      4×4 (the 3×3 block is used)
    intrinsic/intrinsic_color.txt

The clip is stored at the depth camera's resolution with ``intrinsic_depth``: colour is
resized to the depth size (bilinear) when it differs, as the evaluation protocols do (the
depth stream is the geometric reference; ScanNet's colour-depth registration is itself only
approximate). ROOT may be a scene folder or a folder of scenes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from gemdepth.data.converters._common import (
    ConverterError,
    FrameError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    natural_key,
    pose_from_c2w,
    read_png16,
    read_rgb,
    require_dir,
    require_file,
)

__all__ = ["CORPUS", "LICENCE", "iter_clips", "read_matrix"]

CORPUS = "scannet"
LICENCE = "ScanNet Terms of Use (non-commercial research)"
LAYOUT = ("<scene>/{color/<i>.jpg, depth/<i>.png, pose/<i>.txt, intrinsic/intrinsic_depth.txt}")


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file (``FrameError`` when unreadable or wrong size)."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise FrameError(f"{path}: unreadable matrix ({exc})") from exc
    if m.shape != shape:
        raise FrameError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {m.shape}")
    return m


def _scenes(root: Path) -> list[Path]:
    if (root / "color").is_dir():
        return [root]
    for base in (root, root / "scans"):
        found = sorted((p for p in base.glob("*") if (p / "color").is_dir()), key=natural_key)
        if found:
            return found
    raise ConverterError(f"no scene folder with color/ in {root}; expected layout: {LAYOUT}")


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1) -> Iterator[dict]:
    """Clips of every ScanNet scene under ``root`` at depth resolution."""
    root = as_path(root)
    scenes = _scenes(root)
    for s in scenes:
        require_dir(s / "depth", LAYOUT)
        require_dir(s / "pose", LAYOUT)
        require_file(s / "intrinsic" / "intrinsic_depth.txt", LAYOUT)
    skips = SkipLog(CORPUS)

    def load(ref: FrameRef) -> LoadedFrame:
        raw = read_png16(ref.paths["depth"])
        depth = raw.astype(np.float32) / 1000.0
        h, w = depth.shape
        rgb = read_rgb(ref.paths["rgb"])
        if rgb.shape[:2] != (h, w):
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.uint8)
        c2w = read_matrix(ref.paths["pose"])
        if not np.isfinite(c2w).all():
            raise FrameError(f"{ref.paths['pose']}: invalid (non-finite) pose", "invalid pose")
        return LoadedFrame(rgb=rgb, depth=depth, intrinsics=ref.intrinsics,
                           extrinsics=pose_from_c2w(c2w))

    def generate() -> Iterator[dict]:
        for scene in scenes:
            k = read_matrix(scene / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
            refs = [FrameRef(index=int(img.stem),
                             paths={"rgb": img, "depth": scene / "depth" / f"{img.stem}.png",
                                    "pose": scene / "pose" / f"{img.stem}.txt"},
                             intrinsics=k)
                    for img in sorted(scene.glob("color/*.jpg"), key=natural_key)
                    if img.stem.isdigit()]
            yield from build_clips(
                refs, corpus=CORPUS, sequence=scene.name, clip_length=clip_length,
                stride=stride, load=load, skips=skips, licence=LICENCE,
                meta={"sky_handling": "none (indoor)",
                      "resolution": "depth camera (colour resized), intrinsic_depth"},
            )
        skips.summary()

    return generate()
