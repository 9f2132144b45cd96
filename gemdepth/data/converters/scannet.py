"""ScanNet (Dai et al., CVPR 2017) as exported by its SensReader tool.

One scene folder (``scene0000_00/``) holds::

    color/<i>.jpg                      colour (1296×968 as exported, or already 640×480)
    depth/<i>.png                      16-bit depth in millimetres, 640×480, 0 = invalid
    pose/<i>.txt                       4×4 camera-to-world (OpenCV axes); invalid poses are
                                       written as -inf / nan and those frames are skipped
    intrinsic/intrinsic_depth.txt      4×4 (the 3×3 block is used)
    intrinsic/intrinsic_color.txt

Exports of other RGB-D sets in this layout (7-Scenes-style) are read too: colour as ``.png``
or ``.jpeg`` as well as ``.jpg``; frame names that are not plain numbers (``frame-000012``,
``frame-000012.color.png`` with ``frame-000012.depth.png`` / ``frame-000012.pose.txt``):
the frame index is the number in the name (or the position in name order when names carry
no unique number) and the names are kept in ``meta["frame_names"]``; a 3×3
``intrinsic_depth.txt``; depth value 65535, the "no measurement" marker of Kinect-style
exports, is invalid (0), not 65.5 m.

The clip is stored at the depth camera's resolution with ``intrinsic_depth``: colour is
resized to the depth size (bilinear) when it differs, as the evaluation protocols do (the
depth stream is the geometric reference; ScanNet's colour-depth registration is itself only
approximate). ROOT may be a scene folder or a folder of scenes.
"""

from __future__ import annotations

import re
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

__all__ = ["CORPUS", "LICENCE", "OPTIONS", "iter_clips", "read_matrix", "read_intrinsics"]

CORPUS = "scannet"
LICENCE = "ScanNet Terms of Use (non-commercial research)"
LAYOUT = ("<scene>/{color/<i>.jpg|png, depth/<i>.png, pose/<i>.txt, "
          "intrinsic/intrinsic_depth.txt (3x3 or 4x4)}")
COLOUR_EXT = (".jpg", ".jpeg", ".png")
#: 16-bit depth value meaning "no measurement" in Kinect-style exports (7-Scenes and others).
INVALID_DEPTH = 65535
#: ``-o key=value`` options of ``gemdepth data convert scannet`` and their meaning.
OPTIONS = {
    "depth_scale": "depth PNG units per metre (1000: millimetres, as ScanNet and 7-Scenes)",
}


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file (``FrameError`` when unreadable or wrong size)."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise FrameError(f"{path}: unreadable matrix ({exc})") from exc
    if m.shape != shape:
        raise FrameError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {m.shape}")
    return m


def read_intrinsics(path: Path) -> np.ndarray:
    """The 3×3 pinhole matrix of an ``intrinsic_depth.txt`` holding a 3×3 or 4×4 matrix
    (:class:`ConverterError` naming the file otherwise)."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ConverterError(f"{path}: unreadable intrinsics ({exc}); expected a 3x3 or 4x4 "
                             "matrix of numbers") from exc
    if m.shape not in ((3, 3), (4, 4)):
        raise ConverterError(f"{path}: expected a 3x3 or 4x4 intrinsics matrix, got shape "
                             f"{m.shape[0]}x{m.shape[1]}")
    k = m[:3, :3]
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ConverterError(f"{path}: not a pinhole matrix with positive focal lengths: "
                             f"{k.tolist()}")
    return k


def _scenes(root: Path) -> list[Path]:
    if (root / "color").is_dir():
        return [root]
    for base in (root, root / "scans"):
        found = sorted((p for p in base.glob("*") if (p / "color").is_dir()), key=natural_key)
        if found:
            return found
    raise ConverterError(f"no scene folder with color/ in {root}; expected layout: {LAYOUT}")


def _frame_id(img: Path) -> str:
    """The name shared by a frame's files: ``frame-000012`` of ``frame-000012.color.png``."""
    stem = img.stem
    return stem[: -len(".color")] if stem.lower().endswith(".color") else stem


def _first_file(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _frame_indices(ids: list[str]) -> tuple[list[int], str]:
    """Frame indices of frame names in name order, and how they were derived.

    Plain numbers are the index; otherwise the last number in each name when every name has
    one and they increase in name order; otherwise the position in name order.
    """
    if all(i.isdigit() for i in ids):
        return [int(i) for i in ids], "file name"
    nums = [re.findall(r"\d+", i) for i in ids]
    if all(nums):
        last = [int(n[-1]) for n in nums]
        if all(b > a for a, b in zip(last[:-1], last[1:])):
            return last, "number in the file name"
    return list(range(len(ids))), "position in name order"


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               depth_scale: float = 1000.0) -> Iterator[dict]:
    """Clips of every ScanNet-layout scene under ``root`` at depth resolution."""
    if not depth_scale > 0:
        raise ConverterError(f"depth_scale must be positive, got {depth_scale}")
    root = as_path(root)
    scenes = _scenes(root)
    intrinsics = {}
    for s in scenes:
        require_dir(s / "depth", LAYOUT)
        require_dir(s / "pose", LAYOUT)
        intrinsics[s] = read_intrinsics(require_file(s / "intrinsic" / "intrinsic_depth.txt",
                                                     LAYOUT))
        if not any(p.suffix.lower() in COLOUR_EXT for p in (s / "color").iterdir()):
            found = sorted(p.name for p in (s / "color").iterdir())
            shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
            raise ConverterError(f"{s / 'color'}: no colour frames ({'/'.join(COLOUR_EXT)}); "
                                 f"found {len(found)} file(s){': ' + shown if found else ''}; "
                                 f"expected layout: {LAYOUT}")
    skips = SkipLog(CORPUS)

    def load(ref: FrameRef) -> LoadedFrame:
        raw = read_png16(ref.paths["depth"])
        depth = np.where(raw == INVALID_DEPTH, 0.0, raw.astype(np.float32) / depth_scale)
        h, w = depth.shape
        rgb = read_rgb(ref.paths["rgb"])
        if rgb.shape[:2] != (h, w):
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.uint8)
        c2w = read_matrix(ref.paths["pose"])
        if not np.isfinite(c2w).all():
            raise FrameError(f"{ref.paths['pose']}: invalid (non-finite) pose", "invalid pose")
        return LoadedFrame(rgb=rgb, depth=depth.astype(np.float32), intrinsics=ref.intrinsics,
                           extrinsics=pose_from_c2w(c2w), extra=ref.extra)

    def refs_of(scene: Path) -> tuple[list[FrameRef], str]:
        images = sorted((p for p in (scene / "color").iterdir()
                         if p.suffix.lower() in COLOUR_EXT), key=natural_key)
        ids = [_frame_id(img) for img in images]
        indices, how = _frame_indices(ids)
        refs = []
        for img, fid, index in zip(images, ids, indices):
            depth = _first_file(scene / "depth", [f"{fid}.png", f"{fid}.depth.png"])
            pose = _first_file(scene / "pose", [f"{fid}.txt", f"{fid}.pose.txt"])
            if depth is None or pose is None:
                what = "depth/" + fid + ".png" if depth is None else "pose/" + fid + ".txt"
                skips.skip("no depth" if depth is None else "no pose",
                           f"{img}: no {what} beside it")
                continue
            refs.append(FrameRef(index=index, paths={"rgb": img, "depth": depth, "pose": pose},
                                 intrinsics=intrinsics[scene], extra={"frame_names": img.name}))
        return refs, how

    def generate() -> Iterator[dict]:
        for scene in scenes:
            refs, how = refs_of(scene)
            yield from build_clips(
                refs, corpus=CORPUS, sequence=scene.name, clip_length=clip_length,
                stride=stride, load=load, skips=skips, licence=LICENCE,
                meta={"sky_handling": "none (indoor)", "depth_scale": depth_scale,
                      "frame_index_source": how,
                      "resolution": "depth camera (colour resized), intrinsic_depth"},
                per_frame_meta=("frame_names",),
            )
        skips.summary()

    return generate()
