"""Dynamic Replica (Karaev et al., DynamicStereo, CVPR 2023) in its published layout.

Each split folder (``train/``, ``valid/``, ``test/``) holds ``frame_annotations_<split>.jgz``
(a gzipped JSON list; plain ``.json`` also accepted) and the files it points to, with paths
relative to the split folder. One annotation per frame and camera (``camera_name`` left/right):

* ``image.path`` (PNG), ``image.size`` ``[H, W]``;
* ``depth.path``: a ``.geometric.png`` whose 16-bit pixels are the *bits of float16* depth
  values (the CO3D/Implicitron convention), times ``depth.scale_adjustment``;
* ``viewpoint``: a PyTorch3D camera: ``R``, ``T`` with ``X_cam = X_world · R + T`` (row
  vectors) in PyTorch3D axes (x left, y up, z forward); ``focal_length`` and
  ``principal_point`` in NDC, ``intrinsics_format`` ``ndc_isotropic`` (scaled by half the
  shorter side) or ``ndc_norm_image_bounds`` (by half width / half height).

Conversion, as PyTorch3D's ``opencv_from_cameras_projection``: ``R_cv = F·Rᵀ``,
``t_cv = F·T`` with ``F = diag(-1, -1, 1)``; ``f_px = f_ndc · s``, ``c_px = half_size -
p_ndc · s``. Non-finite or non-positive depth is invalid. One sequence per
``sequence_name`` and camera (``camera="left"`` by default; ``None`` for both).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    intrinsics_matrix,
    note_invalid_depth,
    read_rgb,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "iter_clips", "pytorch3d_to_opencv", "read_float16_png"]

CORPUS = "dynamic_replica"
LICENCE = "CC-BY-NC-4.0"
#: ``-o key=value`` options of ``gemdepth data convert dynamic_replica`` and their meaning.
OPTIONS: dict[str, str] = {
    'split': 'annotation split, e.g. train, valid, test (default: every one found)',
    'camera': 'left, right, or all (both as separate sequences)',
}
LAYOUT = ("<split>/frame_annotations_<split>.jgz plus the image/depth files it names "
          "(paths relative to <split>/)")
_FLIP = np.diag([-1.0, -1.0, 1.0])


def pytorch3d_to_opencv(viewpoint: dict[str, Any], height: int, width: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(K (3, 3) pixels, world-to-camera (4, 4) OpenCV)`` of a PyTorch3D viewpoint dict."""
    R = np.asarray(viewpoint["R"], dtype=np.float64)
    T = np.asarray(viewpoint["T"], dtype=np.float64)
    focal = np.broadcast_to(np.asarray(viewpoint["focal_length"], dtype=np.float64), (2,))
    pp = np.asarray(viewpoint["principal_point"], dtype=np.float64)
    half = np.array([width / 2.0, height / 2.0])
    fmt = str(viewpoint.get("intrinsics_format", "ndc_norm_image_bounds")).lower()
    if fmt == "ndc_isotropic":
        scale = np.array([half.min(), half.min()])
    elif fmt == "ndc_norm_image_bounds":
        scale = half
    else:
        raise FrameError(f"unknown intrinsics_format {fmt!r}")
    f_px = focal * scale
    c_px = half - pp * scale
    e = np.eye(4)
    e[:3, :3] = _FLIP @ R.T
    e[:3, 3] = _FLIP @ T
    return intrinsics_matrix(f_px[0], f_px[1], c_px[0], c_px[1]), e


def read_float16_png(path: Path) -> np.ndarray:
    """float32 ``(H, W)`` of a PNG whose 16-bit pixels hold float16 bit patterns."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except Exception as exc:
        raise FrameError(f"{path}: unreadable depth PNG ({exc})") from exc
    if raw.ndim != 2:
        raise FrameError(f"{path}: expected a single-channel 16-bit PNG, got {raw.shape}")
    return raw.astype(np.uint16).view(np.float16).astype(np.float32)


def _load_annotations(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix in (".jgz", ".gz") else open
    try:
        with opener(path, "rt", encoding="utf8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConverterError(f"{path}: unreadable frame annotations ({exc})") from exc
    if not isinstance(data, list):
        raise ConverterError(f"{path}: expected a JSON list of frame annotations")
    return data


def _split_dirs(root: Path, split: str | None) -> list[tuple[Path, Path]]:
    """``(split folder, annotation file)`` pairs under ``root``."""
    def ann(d: Path) -> Path | None:
        for ext in (".jgz", ".json"):
            hits = sorted(d.glob(f"frame_annotations_*{ext}"))
            if split is not None:
                hits = [h for h in hits if h.name == f"frame_annotations_{split}{ext}"]
            if hits:
                return hits[0]
        return None

    own = ann(root)
    if own is not None:
        return [(root, own)]
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        a = ann(d)
        if a is not None:
            out.append((d, a))
    if not out:
        raise ConverterError(f"no frame_annotations_<split>.jgz in {root} or its sub-folders"
                             + (f" for split {split!r}" if split else "")
                             + f"; expected layout: {LAYOUT}")
    return out


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               split: str | None = None, camera: str | None = "left") -> Iterator[dict]:
    """Clips of every sequence (and camera) of the split(s) under ``root``.

    ``camera=None`` (or ``"all"``) converts both cameras as separate sequences.
    """
    if isinstance(camera, str) and camera.lower() in ("all", "both", "none"):
        camera = None
    root = as_path(root)
    splits = _split_dirs(root, split)
    skips = SkipLog(CORPUS)

    def generate() -> Iterator[dict]:
        for split_dir, ann_path in splits:
            groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
            for a in _load_annotations(ann_path):
                cam = a.get("camera_name") or "left"
                if camera is None or cam == camera:
                    groups[(str(a["sequence_name"]), cam)].append(a)
            if not groups:
                raise ConverterError(f"{ann_path}: no frames for camera {camera!r}")
            for (seq, cam), anns in sorted(groups.items()):
                anns.sort(key=lambda a: int(a["frame_number"]))
                refs = []
                for a in anns:
                    try:
                        refs.append(FrameRef(
                            index=int(a["frame_number"]),
                            paths={"rgb": split_dir / a["image"]["path"],
                                   "depth": split_dir / a["depth"]["path"]},
                            extra={"viewpoint": a["viewpoint"],
                                   "size": a["image"].get("size"),
                                   "scale": float(a["depth"].get("scale_adjustment") or 1.0),
                                   "timestamps": a.get("frame_timestamp")}))
                    except (KeyError, TypeError) as exc:
                        skips.skip("bad annotation", f"{seq} frame {a.get('frame_number')}: "
                                                     f"missing {exc}")
                yield from build_clips(
                    refs, corpus=CORPUS, sequence=f"{seq}_{cam}", clip_length=clip_length,
                    stride=stride, load=_load, skips=skips, licence=LICENCE,
                    meta={"split": split_dir.name, "camera": cam,
                          "sky_handling": "none (indoor)"},
                    per_frame_meta=("timestamps",),
                )
        skips.summary()

    return generate()


def _load(ref: FrameRef) -> LoadedFrame:
    rgb = read_rgb(ref.paths["rgb"])
    h, w = rgb.shape[:2]
    size = ref.extra.get("size")
    if size is not None and [int(s) for s in size] != [h, w]:
        raise FrameError(f"{ref.paths['rgb']}: image is {h}x{w} but the annotation says "
                         f"{size[0]}x{size[1]}")
    k, e = pytorch3d_to_opencv(ref.extra["viewpoint"], h, w)
    depth = read_float16_png(ref.paths["depth"]) * ref.extra["scale"]
    note_invalid_depth(depth)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return LoadedFrame(rgb=rgb, depth=depth, intrinsics=k, extrinsics=e,
                       extra={"timestamps": ref.extra.get("timestamps")})
