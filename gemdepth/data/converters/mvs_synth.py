"""MVS-Synth (Huang et al., DeepMVS, CVPR 2018) in its published layout.

``GTAV_1080/`` (1920×1080), ``GTAV_720/`` (1280×720) or ``GTAV_540/`` hold numbered
sequences::

    GTAV_720/0000/images/0000.png
    GTAV_720/0000/depths/0000.exr   float z-depth (one channel); the sky is +inf
    GTAV_720/0000/poses/0000.json   {"extrinsic": 4x4 world-to-camera (OpenCV axes),
                                     "c_x", "c_y", "f_x", "f_y": pixels}

ROOT may be a ``GTAV_*`` folder or its parent (then ``resolution=`` picks one when several
are present). Non-finite or non-positive depth is invalid; infinite depth becomes the ``sky``
mask. Some releases state the intrinsics for the 1920×1080 render whatever the stored size:
when the principal point is far from the image centre of the stored image but matches a
proportionally larger one, the intrinsics are rescaled to the stored image (recorded in
``meta["intrinsics_rescaled"]``). Needs the ``openexr`` package for the depth files.
"""

from __future__ import annotations

import json
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
    intrinsics_matrix,
    natural_key,
    note_invalid_depth,
    read_exr,
    read_rgb,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "iter_clips", "read_pose_json"]

CORPUS = "mvs_synth"
LICENCE = "research-only (MVS-Synth terms, GTA V imagery)"
#: ``-o key=value`` options of ``gemdepth data convert mvs_synth`` and their meaning.
OPTIONS: dict[str, str] = {
    'resolution': '1080, 720 or 540: which GTAV_<res> folder when ROOT holds several',
}
LAYOUT = "GTAV_<res>/<nnnn>/{images/<nnnn>.png, depths/<nnnn>.exr, poses/<nnnn>.json}"


def read_pose_json(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(K (3, 3), world-to-camera (4, 4))`` of one MVS-Synth pose file."""
    try:
        data = json.loads(path.read_text())
        k = intrinsics_matrix(float(data["f_x"]), float(data["f_y"]), float(data["c_x"]),
                              float(data["c_y"]))
        e = np.asarray(data["extrinsic"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FrameError(f"{path}: not an MVS-Synth pose file with 'extrinsic', 'c_x', 'c_y', "
                         f"'f_x', 'f_y' ({exc!r})") from exc
    if e.shape != (4, 4):
        raise FrameError(f"{path}: 'extrinsic' has shape {e.shape}, expected 4x4")
    return k, e


def _fit_intrinsics(k: np.ndarray, h: int, w: int) -> tuple[np.ndarray, bool]:
    """Rescale ``k`` to a ``h×w`` image when it was stated for a larger render (see above)."""
    ref_w, ref_h = 2.0 * k[0, 2], 2.0 * k[1, 2]
    if abs(ref_w - w) <= 0.05 * w and abs(ref_h - h) <= 0.05 * h:
        return k, False
    sx, sy = w / ref_w, h / ref_h
    if abs(sx - sy) > 0.05 * sx:
        raise FrameError(f"principal point ({k[0, 2]}, {k[1, 2]}) fits neither the stored "
                         f"{w}x{h} image nor a proportional render")
    out = k.copy()
    out[0] *= sx
    out[1] *= sy
    return out, True


def _pick_roots(root: Path, resolution: str | None) -> list[Path]:
    if root.name.startswith("GTAV_") or any(root.glob("*/poses")):
        return [root]
    found = sorted(p for p in root.glob("GTAV_*") if p.is_dir())
    if resolution is not None:
        found = [p for p in found if p.name == f"GTAV_{resolution}"]
    if not found:
        raise ConverterError(f"no GTAV_* folder (or sequences with poses/) in {root}"
                             + (f" for resolution {resolution!r}" if resolution else "")
                             + f"; expected layout: {LAYOUT}")
    if len(found) > 1:
        raise ConverterError(f"{root} holds {[p.name for p in found]}; pick one with "
                             "resolution='1080', '720' or '540'")
    return found


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               resolution: str | None = None) -> Iterator[dict]:
    """Clips of every MVS-Synth sequence under ``root``."""
    root = as_path(root)
    base = _pick_roots(root, resolution)[0]
    seqs = sorted((p for p in base.iterdir() if (p / "poses").is_dir()), key=natural_key)
    if not seqs:
        raise ConverterError(f"no sequence folder with poses/ in {base}; expected layout: "
                             f"{LAYOUT}")
    for s in seqs:
        for sub in ("images", "depths"):
            if not (s / sub).is_dir():
                raise ConverterError(f"missing folder {s / sub}; expected layout: {LAYOUT}")
    skips = SkipLog(CORPUS)
    rescaled: dict[str, bool] = {}

    def load(ref: FrameRef) -> LoadedFrame:
        rgb = read_rgb(ref.paths["rgb"])
        k, e = read_pose_json(ref.paths["pose"])
        k, was = _fit_intrinsics(k, *rgb.shape[:2])
        rescaled["any"] = rescaled.get("any", False) or was
        depth = read_exr(ref.paths["depth"])
        sky = np.isposinf(depth)
        note_invalid_depth(depth, exclude=sky)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return LoadedFrame(rgb=rgb, depth=depth, intrinsics=k, extrinsics=e, sky=sky)

    def generate() -> Iterator[dict]:
        for seq in seqs:
            refs = [FrameRef(index=int(img.stem),
                             paths={"rgb": img, "depth": seq / "depths" / f"{img.stem}.exr",
                                    "pose": seq / "poses" / f"{img.stem}.json"})
                    for img in sorted(seq.glob("images/*.png"), key=natural_key)
                    if img.stem.isdigit()]
            for clip in build_clips(
                refs, corpus=CORPUS, sequence=f"{base.name}_{seq.name}",
                clip_length=clip_length, stride=stride, load=load, skips=skips,
                licence=LICENCE, meta={"sky_handling": "infinite depth -> sky mask, depth 0"},
            ):
                clip["meta"]["intrinsics_rescaled"] = rescaled.pop("any", False)
                yield clip
        skips.summary()

    return generate()
