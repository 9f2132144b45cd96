"""A generic folder of video frames with per-frame depth or disparity labels (pose-free).

For user videos with pseudo labels (e.g. a stereo matcher's disparity or a teacher model's
output). Layout, one folder per sequence (or ROOT itself is one sequence)::

    <sequence>/rgb/<name>.{png,jpg}         (also images/, image/, color/, frames/)
    <sequence>/depth/<name>.{npy,png,exr,tif} (also disparity/, labels/, depths/)

Labels are matched to frames by file stem, frames are ordered naturally by name.
``label`` says what the maps hold:

* ``"disparity"`` (default): relative disparity (inverse depth up to scale and shift);
  stored as ``relative-disparity`` times ``scale``;
* ``"metric-depth"``: depth in metres after multiplying by ``scale`` (e.g. ``0.001`` for
  millimetre PNGs); stored as ``metric``;
* ``"relative-depth"``: depth up to scale; stored as relative disparity ``1 / (scale·d)``.

Non-finite and non-positive values are invalid (0). Intrinsics come from ``fx, fy, cx, cy``
when given, else from ``fov_deg`` (horizontal field of view, default 60°, principal point
at the centre) and are recorded as assumed in ``meta["intrinsics_source"]``.
"""

from __future__ import annotations

import math
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
    intrinsics_matrix,
    natural_key,
    note_invalid_depth,
    read_exr,
    read_rgb,
)

__all__ = ["CORPUS", "OPTIONS", "LABELS", "iter_clips", "read_label"]

CORPUS = "frames"
#: ``-o key=value`` options of ``gemdepth data convert frames`` and their meaning.
OPTIONS: dict[str, str] = {
    'label': 'what the label maps hold: disparity, metric-depth or relative-depth',
    'scale': 'factor applied to the labels (e.g. 0.001 for millimetre PNGs)',
    'fx': 'focal length x in pixels (give fx, fy, cx, cy together)',
    'fy': 'focal length y in pixels',
    'cx': 'principal point x in pixels',
    'cy': 'principal point y in pixels',
    'fov_deg': 'horizontal field of view assumed when fx..cy are not given',
    'corpus': 'corpus name written into the shards',
    'licence': 'licence string recorded',
    'rgb_dir': 'frame folder name (default: rgb, images, image, color or frames)',
    'label_dir': 'label folder name (default: depth, disparity, labels or depths)',
}
LABELS = ("disparity", "metric-depth", "relative-depth")
RGB_DIRS = ("rgb", "images", "image", "color", "frames")
LABEL_DIRS = ("depth", "disparity", "labels", "depths")
RGB_EXT = (".png", ".jpg", ".jpeg")
LABEL_EXT = (".npy", ".png", ".exr", ".tif", ".tiff")
LAYOUT = (f"<sequence>/{{{'|'.join(RGB_DIRS)}}}/<name>.png|jpg and "
          f"<sequence>/{{{'|'.join(LABEL_DIRS)}}}/<name>.npy|png|exr|tif")


def read_label(path: Path) -> np.ndarray:
    """float32 ``(H, W)`` label map of a ``.npy``, ``.png`` (8/16-bit), ``.exr`` or ``.tif``."""
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return read_exr(path)
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as exc:
        raise FrameError(f"{path}: unreadable label ({exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise FrameError(f"{path}: expected a single-channel map, got shape {arr.shape}")
    return arr.astype(np.float32)


def _find_dir(seq: Path, names: tuple[str, ...], override: str | None) -> Path | None:
    for name in ((override,) if override else names):
        if (seq / name).is_dir():
            return seq / name
    return None


def iter_clips(
    root: Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    label: str = "disparity",
    scale: float = 1.0,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    fov_deg: float = 60.0,
    corpus: str = CORPUS,
    licence: str = "user-supplied",
    rgb_dir: str | None = None,
    label_dir: str | None = None,
) -> Iterator[dict]:
    """Pose-free clips of every sequence folder under ``root`` (see the module docstring)."""
    if label not in LABELS:
        raise ConverterError(f"label must be one of {LABELS}, got {label!r}")
    if scale <= 0:
        raise ConverterError(f"scale must be positive, got {scale}")
    root = as_path(root)
    cands = [root] + sorted((p for p in root.iterdir() if p.is_dir()), key=natural_key)
    seqs = []
    for c in cands:
        r, lab = _find_dir(c, RGB_DIRS, rgb_dir), _find_dir(c, LABEL_DIRS, label_dir)
        if r is not None and lab is not None:
            seqs.append((c, r, lab))
        if c is root and seqs:
            break
    if not seqs:
        raise ConverterError(f"no sequence folder with both a frame folder and a label folder in "
                             f"{root}; expected layout: {LAYOUT}")
    given = [fx, fy, cx, cy]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise ConverterError("give all of fx, fy, cx, cy (or none, to assume fov_deg)")
    skips = SkipLog(corpus)

    def load(ref: FrameRef) -> LoadedFrame:
        rgb = read_rgb(ref.paths["rgb"])
        raw = read_label(ref.paths["depth"]) * np.float32(scale)
        note_invalid_depth(raw)
        ok = np.isfinite(raw) & (raw > 0)
        if label == "relative-depth":
            value = np.where(ok, 1.0 / np.where(ok, raw, 1.0), 0.0)
        else:
            value = np.where(ok, raw, 0.0)
        h, w = rgb.shape[:2]
        if fx is not None:
            k = intrinsics_matrix(fx, fy, cx, cy)
        else:
            f = (w / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
            k = intrinsics_matrix(f, f, w / 2.0, h / 2.0)
        return LoadedFrame(rgb=rgb, depth=value.astype(np.float32), intrinsics=k,
                           extra={"frame_names": ref.paths["rgb"].name})

    def generate() -> Iterator[dict]:
        for seq, rdir, ldir in seqs:
            labels = {p.stem: p for p in ldir.iterdir() if p.suffix.lower() in LABEL_EXT}
            images = sorted((p for p in rdir.iterdir() if p.suffix.lower() in RGB_EXT),
                            key=natural_key)
            refs = []
            for i, img in enumerate(images):
                if img.stem not in labels:
                    skips.skip("no label", f"{img}: no {ldir.name}/{img.stem}.* label")
                    continue
                refs.append(FrameRef(index=i, paths={"rgb": img, "depth": labels[img.stem]}))
            yield from build_clips(
                refs, corpus=corpus, sequence=seq.name, clip_length=clip_length, stride=stride,
                load=load, skips=skips,
                depth_kind="metric" if label == "metric-depth" else "relative-disparity",
                has_pose=False, licence=licence,
                meta={"label": label, "label_scale": scale, "sky_handling": "none",
                      "intrinsics_source": "given" if fx is not None
                      else f"assumed: {fov_deg} deg horizontal FoV, centred"},
                per_frame_meta=("frame_names",),
            )
        skips.summary()

    return generate()
