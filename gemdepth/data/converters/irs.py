"""IRS (Wang et al., "IRS: A Large Naturalistic Indoor Robotics Stereo Dataset", 2019).

Layout: ``<Home|Office|Restaurant|Store>/<scene>/`` folders of rendered stereo frames::

    l_<n>.png   left image (960×540)
    r_<n>.png   right image (unused)
    d_<n>.exr   disparity of the left image in pixels (float EXR)

The rig is documented with focal length 480 px and baseline 0.1 m, so metric depth is
``480 · 0.1 / disparity`` (disparity ≤ 0 or non-finite is invalid), with intrinsics
``fx = fy = focal``, principal point at the image centre. IRS is used pose-free (the paper's
stage 2): clips carry no extrinsics. ``baseline=None`` keeps the disparity itself as
``relative-disparity`` (for data whose calibration is unknown). Needs ``openexr``.
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
    note_invalid_depth,
    read_exr,
    read_rgb,
)

__all__ = ["CORPUS", "OPTIONS", "LICENCE", "FOCAL", "BASELINE", "iter_clips"]

CORPUS = "irs"
LICENCE = "research-only (IRS dataset terms)"
#: ``-o key=value`` options of ``gemdepth data convert irs`` and their meaning.
OPTIONS: dict[str, str] = {
    'focal': 'focal length in pixels (disparity -> depth and intrinsics)',
    'baseline': 'stereo baseline in metres for metric depth; none: store relative disparity',
}
LAYOUT = "<category>/<scene>/{l_<n>.png, d_<n>.exr}"
FOCAL = 480.0
BASELINE = 0.1


def iter_clips(root: Path, clip_length: int = 32, stride: int = 1, *,
               focal: float = FOCAL, baseline: float | str | None = BASELINE) -> Iterator[dict]:
    """Pose-free clips of every IRS scene folder (one with ``d_*.exr``) under ``root``."""
    if isinstance(baseline, str):
        if baseline.lower() != "none":
            raise ConverterError(f"baseline must be metres or none, got {baseline!r}")
        baseline = None
    root = as_path(root)
    scenes = sorted({p.parent for p in root.rglob("d_*.exr")}, key=natural_key)
    if not scenes:
        raise ConverterError(f"no d_<n>.exr disparity file under {root}; expected layout: "
                             f"{LAYOUT}")
    metric = baseline is not None
    skips = SkipLog(CORPUS)

    def load(ref: FrameRef) -> LoadedFrame:
        rgb = read_rgb(ref.paths["rgb"])
        disp = read_exr(ref.paths["depth"])
        note_invalid_depth(disp)
        ok = np.isfinite(disp) & (disp > 0)
        h, w = disp.shape
        k = intrinsics_matrix(focal, focal, w / 2.0, h / 2.0)
        if metric:
            value = np.where(ok, focal * baseline / np.where(ok, disp, 1.0), 0.0)
        else:
            value = np.where(ok, disp, 0.0)
        return LoadedFrame(rgb=rgb, depth=value.astype(np.float32), intrinsics=k)

    def generate() -> Iterator[dict]:
        for scene in scenes:
            refs = []
            for disp in sorted(scene.glob("d_*.exr"), key=natural_key):
                n = disp.stem[2:]
                if not n.isdigit():
                    continue
                refs.append(FrameRef(index=int(n), paths={"rgb": scene / f"l_{n}.png",
                                                          "depth": disp}))
            rel = scene.relative_to(root) if scene != root else Path(scene.name)
            yield from build_clips(
                refs, corpus=CORPUS, sequence="_".join(rel.parts) or scene.name,
                clip_length=clip_length, stride=stride, load=load, skips=skips,
                depth_kind="metric" if metric else "relative-disparity", has_pose=False,
                licence=LICENCE,
                meta={"sky_handling": "none (indoor)",
                      "label_source": (f"depth = {focal} px * {baseline} m / disparity" if metric
                                       else "disparity in pixels (no calibration)")},
            )
        skips.summary()

    return generate()
