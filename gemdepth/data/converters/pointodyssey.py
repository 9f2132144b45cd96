"""PointOdyssey (Zheng et al., ICCV 2023) in its published layout.

One sequence folder (``<split>/<scene>/``) holds::

    rgbs/rgb_00000.jpg
    depths/depth_00000.png   16-bit PNG; metres = value / 65535 * 1000 (the dataset's loader)
    anno.npz                 "intrinsics" (T, 3, 3) pixels ("pix_T_cams"),
                             "extrinsics" (T, 4, 4) world-to-camera ("cams_T_world"),
                             OpenCV axes, plus tracks we do not use

Depth 0 is invalid; the saturated code 65535 (1000 m, the render's far limit: sky and
background) becomes the ``sky`` mask with depth 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gemdepth.data.converters._common import (
    ConverterError,
    FrameRef,
    LoadedFrame,
    SkipLog,
    as_path,
    build_clips,
    natural_key,
    read_png16,
    read_rgb,
    require_dir,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "DEPTH_SCALE", "iter_clips"]

CORPUS = "pointodyssey"
LICENCE = "CC-BY-NC-SA-4.0 (PointOdyssey terms)"
#: ``-o key=value`` options of ``gemdepth data convert pointodyssey`` and their meaning.
OPTIONS: dict[str, str] = {}
LAYOUT = "<split>/<scene>/{rgbs/rgb_<00000>.jpg, depths/depth_<00000>.png, anno.npz}"
#: Metres per depth code.
DEPTH_SCALE = 1000.0 / 65535.0
SATURATED = 65535


def _read_anno(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as anno:
            missing = [k for k in ("intrinsics", "extrinsics") if k not in anno.files]
            if missing:
                raise ConverterError(f"{path} lacks {missing} (has {anno.files}); expected the "
                                     "published anno.npz with per-frame cameras")
            return (np.asarray(anno["intrinsics"], np.float64),
                    np.asarray(anno["extrinsics"], np.float64))
    except (OSError, ValueError) as exc:
        raise ConverterError(f"{path}: unreadable anno.npz ({exc})") from exc


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1) -> Iterator[dict]:
    """Clips of every sequence (folder with ``anno.npz``) under ``root``."""
    root = as_path(root)
    seqs = sorted({p.parent for p in root.rglob("anno.npz")}, key=natural_key)
    if not seqs:
        raise ConverterError(f"no anno.npz under {root}; expected layout: {LAYOUT}")
    for s in seqs:
        require_dir(s / "rgbs", LAYOUT)
        require_dir(s / "depths", LAYOUT)
    skips = SkipLog(CORPUS)

    def generate() -> Iterator[dict]:
        for seq in seqs:
            intr, extr = _read_anno(seq / "anno.npz")
            if intr.shape[1:] != (3, 3) or extr.shape[1:] != (4, 4) or len(intr) != len(extr):
                raise ConverterError(f"{seq / 'anno.npz'}: intrinsics {intr.shape} / extrinsics "
                                     f"{extr.shape}; expected (T, 3, 3) and (T, 4, 4)")
            refs = []
            for img in sorted(seq.glob("rgbs/rgb_*.jpg"), key=natural_key):
                i = int(img.stem.split("_")[-1])
                if i >= len(intr):
                    skips.skip("no camera", f"{seq.name} frame {i}: anno.npz has {len(intr)}")
                    continue
                depth = seq / "depths" / f"depth_{i:05d}.png"
                refs.append(FrameRef(index=i, paths={"rgb": img, "depth": depth},
                                     intrinsics=intr[i], extrinsics=extr[i]))
            rel = seq.relative_to(root) if seq != root else Path(seq.name)
            yield from build_clips(
                refs, corpus=CORPUS, sequence="_".join(rel.parts) or seq.name,
                clip_length=clip_length, stride=stride, load=_load, skips=skips,
                licence=LICENCE,
                meta={"sky_handling": "depth code 65535 (1000 m) -> sky mask, depth 0",
                      "depth_scale": DEPTH_SCALE},
            )
        skips.summary()

    return generate()


def _load(ref: FrameRef) -> LoadedFrame:
    rgb = read_rgb(ref.paths["rgb"])
    raw = read_png16(ref.paths["depth"])
    sky = raw == SATURATED
    depth = (raw.astype(np.float64) * DEPTH_SCALE).astype(np.float32)
    depth[sky] = 0.0
    return LoadedFrame(rgb=rgb, depth=depth, intrinsics=ref.intrinsics,
                       extrinsics=ref.extrinsics, sky=sky)
