"""Virtual KITTI 2 (Cabon et al., 2020) in its published layout.

The dataset ships as separate archives (``vkitti_2.0.3_rgb``, ``_depth``, ``_textgt``) that
extract to the same tree; ROOT may hold them merged or side by side::

    [vkitti_2.0.3_rgb/]Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg
    [vkitti_2.0.3_depth/]Scene01/clone/frames/depth/Camera_0/depth_00000.png
    [vkitti_2.0.3_textgt/]Scene01/clone/extrinsic.txt, intrinsic.txt

* depth: 16-bit PNG in centimetres; 65535 (655.35 m) is the sky, stored here as ``sky``
  mask with depth 0;
* ``extrinsic.txt``: header then ``frame cameraID r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33
  t3 0 0 0 1``: the world-to-camera 4×4 per frame and camera, OpenCV axes (x right, y down,
  z forward), metres;
* ``intrinsic.txt``: header then ``frame cameraID fx fy cx cy`` in pixels.

One sequence per scene, variation and camera (``Scene01_clone_Camera_0``).
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
    intrinsics_matrix,
    natural_key,
    parse_names,
    read_png16,
    read_rgb,
    require_dir,
    require_file,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "SKY_VALUE", "iter_clips", "read_camera_table"]

CORPUS = "vkitti2"
LICENCE = "CC-BY-NC-SA-3.0"
#: ``-o key=value`` options of ``gemdepth data convert vkitti2`` and their meaning.
OPTIONS: dict[str, str] = {
    'cameras': 'camera ids to convert, e.g. 0 or 0,1 (both stereo cameras)',
    'variations': 'variation folders, e.g. clone,fog (default: all)',
}
LAYOUT = ("Scene*/<variation>/frames/{rgb,depth}/Camera_<c>/{rgb,depth}_<00000>.{jpg,png} and "
          "Scene*/<variation>/{extrinsic,intrinsic}.txt, merged or under vkitti_2.0.3_{rgb,depth,"
          "textgt}/")
#: Depth code of the sky (655.35 m).
SKY_VALUE = 65535


def read_camera_table(path: Path, width: int) -> dict[tuple[int, int], np.ndarray]:
    """``{(frame, camera): row}`` of a VKITTI2 text table with ``width`` numbers after the ids."""
    out: dict[tuple[int, int], np.ndarray] = {}
    lines = path.read_text().splitlines()
    for lineno, line in enumerate(lines[1:], 2):  # first line is the header
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != width + 2:
            raise ConverterError(f"{path}:{lineno}: expected {width + 2} fields "
                                 f"(frame cameraID + {width}), got {len(fields)}")
        try:
            out[(int(fields[0]), int(fields[1]))] = np.asarray(fields[2:], dtype=np.float64)
        except ValueError as exc:
            raise ConverterError(f"{path}:{lineno}: not numbers: {line!r}") from exc
    return out


def _bases(root: Path, kind: str) -> list[Path]:
    return [root] + sorted(p for p in root.glob(f"vkitti*{kind}*") if p.is_dir())


def _find(root: Path, kind: str, rel: str) -> Path | None:
    for base in _bases(root, kind):
        if (base / rel).exists():
            return base / rel
    return None


def iter_clips(
    root: Path,
    clip_length: int = 32,
    stride: int = 1,
    *,
    cameras: tuple[int, ...] | str | int = (0, 1),
    variations: tuple[str, ...] | str | None = None,
) -> Iterator[dict]:
    """Clips of every scene/variation/camera under ``root`` (both cameras by default).

    ``cameras`` and ``variations`` also accept comma-separated strings (``"0"``,
    ``"clone,fog"``) as the command line passes them.
    """
    try:
        cameras = tuple(int(c) for c in (parse_names(cameras) or ("0", "1")))
    except ValueError as exc:
        raise ConverterError(f"cameras must be camera numbers such as 0,1, got {cameras!r}"
                             ) from exc
    variations = parse_names(variations)
    root = as_path(root)
    rgb_dirs = sorted({p for base in _bases(root, "rgb")
                       for p in base.glob("Scene*/*/frames/rgb/Camera_*") if p.is_dir()},
                      key=natural_key)
    if not rgb_dirs:
        raise ConverterError(f"no Scene*/<variation>/frames/rgb/Camera_* folder under {root}; "
                             f"expected layout: {LAYOUT}")
    plans = []
    for rgb_dir in rgb_dirs:
        cam = int(rgb_dir.name.split("_")[-1])
        variation_dir = rgb_dir.parents[2]
        scene, variation = variation_dir.parent.name, variation_dir.name
        if cam not in cameras or (variations is not None and variation not in variations):
            continue
        rel = f"{scene}/{variation}"
        depth_dir = _find(root, "depth", f"{rel}/frames/depth/Camera_{cam}")
        ext = _find(root, "textgt", f"{rel}/extrinsic.txt")
        intr = _find(root, "textgt", f"{rel}/intrinsic.txt")
        require_dir(depth_dir or root / rel / "frames/depth" / f"Camera_{cam}", LAYOUT)
        require_file(ext or root / rel / "extrinsic.txt", LAYOUT)
        require_file(intr or root / rel / "intrinsic.txt", LAYOUT)
        plans.append((f"{scene}_{variation}_Camera_{cam}", cam, rgb_dir, depth_dir, ext, intr))
    if not plans:
        raise ConverterError(f"no sequence under {root} matches cameras={cameras}, "
                             f"variations={variations}")
    skips = SkipLog(CORPUS)

    def generate() -> Iterator[dict]:
        for name, cam, rgb_dir, depth_dir, ext_path, intr_path in plans:
            extr = read_camera_table(ext_path, 16)
            intr = read_camera_table(intr_path, 4)
            refs = []
            for img in sorted(rgb_dir.glob("rgb_*.jpg"), key=natural_key):
                frame = int(img.stem.split("_")[-1])
                e, k = extr.get((frame, cam)), intr.get((frame, cam))
                if e is None or k is None:
                    skips.skip("no camera", f"{name} frame {frame}: not in {ext_path.name}/"
                                            f"{intr_path.name}")
                    continue
                refs.append(FrameRef(
                    index=frame,
                    paths={"rgb": img, "depth": depth_dir / f"depth_{frame:05d}.png"},
                    intrinsics=intrinsics_matrix(*k),
                    extrinsics=e.reshape(4, 4),
                ))
            yield from build_clips(
                refs, corpus=CORPUS, sequence=name, clip_length=clip_length, stride=stride,
                load=_load, skips=skips, licence=LICENCE,
                meta={"sky_handling": "depth code 65535 (655.35 m) -> sky mask, depth 0",
                      "camera": cam},
            )
        skips.summary()

    return generate()


def _load(ref: FrameRef) -> LoadedFrame:
    rgb = read_rgb(ref.paths["rgb"])
    raw = read_png16(ref.paths["depth"])
    sky = raw == SKY_VALUE
    depth = raw.astype(np.float32) / 100.0
    depth[sky] = 0.0
    return LoadedFrame(rgb=rgb, depth=depth, intrinsics=ref.intrinsics,
                       extrinsics=ref.extrinsics, sky=sky)
