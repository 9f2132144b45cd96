"""One video in, its output folder out: reader → streaming windowed inference → writers.

Outputs in ``<out>/<name>/`` (see :mod:`gemdepth.inference.writers`): ``depth.npz``,
``depth.mp4``, ``cameras.npz`` + ``cameras.json`` (models with GEM), ``points.ply`` (GEM),
optionally ``depth_png16/`` and ``depth_exr/``, and ``run.json`` last (settings, counts,
speed). The first window's results are held back (at most ``window`` frames) to fix the
video's colour / 16-bit scale; after that every frame goes straight to the writers.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gemdepth.inference.pointcloud import PointCloudFuser
from gemdepth.inference.preprocess import network_size
from gemdepth.inference.readers import FrameSource
from gemdepth.inference.windowing import FrameResult, WindowConfig, infer_video
from gemdepth.inference.writers import (
    CamerasWriter,
    DepthNpzWriter,
    DepthRange,
    DepthVideoWriter,
    ExrWriter,
    Png16Writer,
    exr_available,
    partial_path,
)

__all__ = ["InferenceOptions", "OutputOptions", "run_source"]

log = logging.getLogger(__name__)


@dataclass
class InferenceOptions:
    """Settings of :func:`gemdepth.inference.infer_video` (official defaults)."""

    input_size: int = 518
    window: int = 32
    overlap: int = 10
    interp: int = 8
    keyframes: tuple[int, ...] | None = None
    device: str | None = None
    dtype: torch.dtype = torch.float32
    chain_cameras: bool = True


@dataclass
class OutputOptions:
    """Which files to write and how."""

    npz: bool = True
    video: bool = True
    ply: bool = True
    png16: bool = False
    exr: bool = False
    ply_voxel: float | None = None
    ply_max_points: int = 1_000_000
    progress: bool = True
    extra_run_info: dict[str, Any] = field(default_factory=dict)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Outputs:
    """The writers of one video, created once the colour scale and camera availability are known."""

    def __init__(self, folder: Path, source: FrameSource, options: OutputOptions, chained: bool) -> None:
        self.folder, self.source, self.options, self.chained = folder, source, options, chained
        self.writers: list[Any] = []
        self.fuser: PointCloudFuser | None = None
        self.ready = False
        self.scale: DepthRange | None = None
        self.has_cameras = False

    def setup(self, first: list[FrameResult]) -> None:
        opts, src = self.options, self.source
        h, w = first[0].depth.shape
        self.scale = DepthRange.from_depths([r.depth for r in first])
        self.has_cameras = first[0].extrinsics is not None
        if opts.npz:
            npz = DepthNpzWriter(self.folder / "depth.npz", h, w, src.fps)
            npz.extra["range"] = np.array([self.scale.low, self.scale.high], dtype=np.float64)
            self.writers.append(npz)
        if opts.png16:
            self.writers.append(Png16Writer(self.folder, self.scale))
        if opts.exr:
            self.writers.append(ExrWriter(self.folder))
        if opts.video:
            self.writers.append(DepthVideoWriter(self.folder / "depth.mp4", h, w, src.fps, self.scale))
        if self.has_cameras:
            self.writers.append(CamerasWriter(self.folder, h, w, src.fps, self.chained))
            if opts.ply:
                max_points = opts.ply_max_points if opts.ply_voxel is None else max(opts.ply_max_points, 10_000_000)
                self.fuser = PointCloudFuser(voxel_size=opts.ply_voxel, max_points=max_points)
        elif opts.ply:
            log.warning("%s: the model predicts no cameras, so no cameras.* and no points.ply", src.name)
        self.ready = True

    def add(self, result: FrameResult) -> None:
        number = _frame_number(self.source, result.index)
        for writer in self.writers:
            writer.add(result, number)
        if self.fuser is not None:
            self.fuser.add(result)

    def commit(self) -> list[str]:
        written: list[str] = []
        for writer in self.writers:
            out = writer.commit()
            written += [p.name for p in (out if isinstance(out, list) else [out])]
        if self.fuser is not None and self.fuser.write(self.folder / "points.ply"):
            written.append("points.ply")
        return written

    def abort(self) -> None:
        for writer in self.writers:
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - best effort cleanup, the original error is raised
                log.exception("cleaning up %s failed", writer)
        partial_path(self.folder / "points.ply").unlink(missing_ok=True)


def _frame_number(source: FrameSource | Iterable[np.ndarray], index: int) -> int:
    sampling = getattr(source, "sampling", None)
    step = getattr(source, "_step", 1)
    return index if sampling is None else sampling.start + index * step


def run_source(
    model: nn.Module,
    source: FrameSource,
    out_root: str | Path,
    inference: InferenceOptions | None = None,
    outputs: OutputOptions | None = None,
) -> dict[str, Any]:
    """Run one source through the model and write its folder; returns the ``run.json`` dict.

    On any error (or interruption) the temporary files are deleted and the error re-raised;
    files of an earlier, complete run in the same folder are left as they were.
    """
    inf = inference or InferenceOptions()
    opts = outputs or OutputOptions()
    if opts.exr and not exr_available():
        raise RuntimeError("EXR output needs the OpenEXR package: pip install OpenEXR (or use --png16)")
    config = WindowConfig(inf.window, inf.overlap, inf.keyframes, inf.interp)
    net_hw = network_size(source.height, source.width, inf.input_size)  # fails early on absurd aspect
    folder = Path(out_root) / source.name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    out = _Outputs(folder, source, opts, inf.chain_cameras)
    calibration = config.window - config.interp
    held: list[FrameResult] = []
    count = 0
    start = time.perf_counter()
    bar = tqdm(total=source.frame_count, unit="frame", desc=source.name, disable=not opts.progress, dynamic_ncols=True)
    try:
        stream = infer_video(
            model,
            source,
            input_size=inf.input_size,
            window=config.window,
            overlap=config.overlap,
            keyframes=config.keyframes,
            interp=config.interp,
            device=inf.device,
            dtype=inf.dtype,
            chain_cameras=inf.chain_cameras,
        )
        for result in stream:
            count += 1
            bar.update(1)
            if not out.ready:
                held.append(result)
                if len(held) < calibration:
                    continue
                out.setup(held)
                for r in held:
                    out.add(r)
                held = []
                continue
            out.add(result)
        if not out.ready:
            out.setup(held)
            for r in held:
                out.add(r)
            held = []
        written = out.commit()
    except BaseException:
        out.abort()
        bar.close()
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    bar.close()
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {
        "input": str(source.path),
        "frames": count,
        "fps": source.fps,
        "frame_size": [source.height, source.width],
        "network_input": list(net_hw),
        "window": asdict(config) | {"stride": config.stride},
        "chained_cameras": inf.chain_cameras if out.has_cameras else None,
        "precision": str(inf.dtype).replace("torch.", ""),
        "colour_range": out.scale.as_dict() if out.scale else None,
        "outputs": written,
        "seconds": round(seconds, 3),
        "frames_per_second": round(count / seconds, 3) if seconds > 0 else None,
        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
        **opts.extra_run_info,
    }
    if out.fuser is not None:
        info["point_cloud"] = {
            "voxel": out.fuser.voxel,
            "points_dropped_out_of_range": out.fuser.dropped_out_of_range,
            "frames_without_points": out.fuser.frames_without_points,
        }
    run_json = folder / "run.json"
    tmp = partial_path(run_json)
    tmp.write_text(json.dumps(info, indent=1, default=str))
    tmp.replace(run_json)
    return info
