"""One video in, its output folder out: reader → streaming windowed inference → writers.

Outputs in ``<out>/<name>/`` (see :mod:`gemdepth.inference.writers`): ``depth.npz``,
``depth.mp4``, ``cameras.npz`` + ``cameras.json`` (models with GEM), ``points.ply`` (GEM),
optionally ``depth_png16/`` and ``depth_exr/``, and ``run.json`` last (settings, counts,
speed). The first window's results are held back (at most ``window`` frames) to fix the
video's colour / 16-bit scale; after that every frame goes straight to the writers.

``run.json`` also records what did not go to plan, so nothing is silently wrong: for video
files the frames the container declares and the frames decoded (``source_frames_declared``,
``source_frames_decoded``, ``source_truncated``), per-window fallbacks (``windows``: constant
depth given scale 0, cameras left unchained because of non-finite poses) and a ``warnings``
list in words. A failed run (a full disk, an unwritable folder) deletes its temporaries and
leaves an earlier complete run in the folder as it was.
"""

from __future__ import annotations

import errno
import json
import logging
import resource
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gemdepth.atomic import atomic_write_text
from gemdepth.inference.pointcloud import PointCloudFuser
from gemdepth.inference.preprocess import network_size
from gemdepth.inference.readers import FrameSource
from gemdepth.inference.windowing import has_split_api
from gemdepth.inference.windowing import FrameResult, WindowConfig, WindowInfo, infer_video
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
from gemdepth.models.cpu_linear import resolved_cpu_linear_backend

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
    cache_encoder: bool = True  # every frame through the encoder once (same output)
    online: bool = False  # one frame at a time (gemdepth.inference.stream), with a per-frame latency log
    online_window: int | None = None  # online cache length in frames (default: the model's num_frames)


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
    ply_focal: float = 470.4  # metric models without cameras: focal (px) of frame 0's cloud, the official default
    progress: bool = True
    extra_run_info: dict[str, Any] = field(default_factory=dict)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Outputs:
    """The writers of one video, created once the colour scale and camera availability are known."""

    def __init__(
        self, folder: Path, source: FrameSource, options: OutputOptions, chained: bool, metric: bool = False
    ) -> None:
        self.folder, self.source, self.options, self.chained = folder, source, options, chained
        self.metric = metric  # depth in metres (metric models) rather than relative disparity
        self.pinhole_first_frame = False  # metric, no cameras: points.ply is frame 0 in its camera frame
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
            npz.extra["units"] = np.array("metres" if self.metric else "relative_disparity")
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
                self.fuser = PointCloudFuser(voxel_size=opts.ply_voxel, max_points=max_points, metric=self.metric)
        elif opts.ply and self.metric:
            # As the official metric VDA's depth_to_pointcloud: a pinhole camera (focal ply_focal px,
            # principal point at the centre); with no predicted poses only frame 0 is back-projected.
            self.fuser = PointCloudFuser(voxel_size=opts.ply_voxel, max_points=opts.ply_max_points, metric=True)
            self.pinhole_first_frame = True
        elif opts.ply:
            log.warning("%s: the model predicts no cameras, so no cameras.* and no points.ply", src.name)
        self.ready = True

    def add(self, result: FrameResult) -> None:
        number = _frame_number(self.source, result.index)
        for writer in self.writers:
            writer.add(result, number)
        if self.fuser is not None and self.pinhole_first_frame:
            if self.fuser.frames == 0:
                h, w = result.depth.shape
                f = self.options.ply_focal
                k = np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=np.float32)
                self.fuser.add(replace(result, intrinsics=k, extrinsics=np.eye(4, dtype=np.float32)))
        elif self.fuser is not None:
            self.fuser.add(result)

    def commit(self) -> list[str]:
        """Finish every writer (all the writing, where a full disk shows up) before renaming any,
        so a failure there leaves an earlier run's files as they were; the earlier ``run.json``
        goes before the renames, so a folder that is half old, half new never looks complete."""
        for writer in self.writers:
            writer.finish()
        ply = self.fuser is not None and self.fuser.write(self.folder / "points.ply")  # atomic itself
        (self.folder / "run.json").unlink(missing_ok=True)
        written: list[str] = []
        for writer in self.writers:
            out = writer.publish()
            written += [p.name for p in (out if isinstance(out, list) else [out])]
        if ply:
            written.append("points.ply")
        return written

    def abort(self) -> None:
        for writer in self.writers:
            try:
                writer.abort()
            except Exception as err:  # noqa: BLE001 - best effort cleanup, the original error is raised
                log.warning("cleaning up %s failed (%s: %s)", getattr(writer, "tmp", writer), type(err).__name__, err)
        try:
            partial_path(self.folder / "points.ply").unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not remove %s (%s)", partial_path(self.folder / "points.ply"), err.strerror or err)


class _WindowLog:
    """Counts the windows whose alignment or camera chaining fell back to a default (each is
    also logged where it happens), for ``run.json``."""

    def __init__(self, metric: bool) -> None:
        self.metric = metric
        self.windows = 0
        self.constant = 0  # depth constant over the alignment frames: scale 0
        self.cameras_unchained = 0  # no similarity could be fitted (non-finite poses)

    def __call__(self, info: WindowInfo) -> None:
        self.windows += 1
        if info.index > 0 and not self.metric and info.scale == 0.0:
            self.constant += 1
        if info.camera_similarity is not None and getattr(info.camera_similarity, "fallback", None):
            self.cameras_unchained += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "count": self.windows,
            "constant_depth_scale_zero": self.constant,
            "cameras_unchained_non_finite": self.cameras_unchained,
        }


def _frame_number(source: FrameSource | Iterable[np.ndarray], index: int) -> int:
    sampling = getattr(source, "sampling", None)
    step = getattr(source, "_step", 1)
    return index if sampling is None else sampling.start + index * step


def _cpu_linear(model: nn.Module, inf: InferenceOptions) -> str | None:
    """How CPU float32 inference computed the linear layers (``"onednn"``/``"native"``); None elsewhere."""
    param = next(iter(model.parameters()), None)
    device = str(inf.device or (param.device if param is not None else "cpu"))
    return resolved_cpu_linear_backend() if device.startswith("cpu") and inf.dtype == torch.float32 else None


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
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "it exists and is not a folder", str(folder))
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    metric = bool(getattr(model, "is_metric", False))
    out = _Outputs(folder, source, opts, inf.chain_cameras, metric)
    windows = _WindowLog(metric)
    calibration = config.window - config.interp
    held: list[FrameResult] = []
    count = 0
    start = time.perf_counter()
    bar = tqdm(total=source.frame_count, unit="frame", desc=source.name, disable=not opts.progress, dynamic_ncols=True)
    latencies: list[float] = []
    try:
        if inf.online:
            from gemdepth.inference.stream import Stream

            online = Stream(model, window=inf.online_window, input_size=inf.input_size, device=inf.device,
                            dtype=inf.dtype)
            stream = online.run(source, latencies, interrupt_ends=hasattr(source, "url"))  # a live source: Ctrl-C ends it
        else:
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
                on_window=windows,
                cache_encoder=inf.cache_encoder,
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
        if inf.online:
            from gemdepth.inference.stream import write_latency_log

            online_info = {"window": online.window, "anchor": "frame 0",
                           **write_latency_log(folder / "latency.csv", latencies, source)}
            written.append("latency.csv")
    except BaseException:
        out.abort()
        bar.close()
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    bar.close()
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {
        "input": str(getattr(source, "url", source.path)),
        "frames": count,
        "fps": source.fps,
        "frame_size": [source.height, source.width],
        "network_input": list(net_hw),
        "window": asdict(config) | {"stride": config.stride},
        "chained_cameras": inf.chain_cameras if out.has_cameras else None,
        "precision": str(inf.dtype).replace("torch.", ""),
        "cpu_linear": _cpu_linear(model, inf),
        "encoder_cache": inf.cache_encoder and has_split_api(model),
        "depth": "metric depth in metres" if metric else "relative disparity (affine-invariant inverse depth)",
        "metric": metric,
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
            "units": "metres" if metric else "relative",
        }
        if out.pinhole_first_frame:
            info["point_cloud"]["frames"] = "frame 0 only, in its camera frame (the model predicts no cameras)"
            info["point_cloud"]["intrinsics"] = {"focal_px": opts.ply_focal, "principal_point": "image centre"}
    info["windows"] = windows.as_dict()
    if inf.online:
        info["online"] = online_info
    info |= _source_counts(source)
    info["warnings"] = _warnings(source.name, info)
    atomic_write_text(folder / "run.json", json.dumps(info, indent=1, default=str))
    return info


def _source_counts(source: FrameSource) -> dict[str, Any]:
    """The container's declared frame count and the frames actually decoded (video files)."""
    declared = getattr(source, "frames_declared", None)
    decoded = getattr(source, "frames_decoded", None)
    if decoded is None:
        return {}
    return {
        "source_frames_declared": declared,
        "source_frames_decoded": decoded,
        "source_truncated": bool(getattr(source, "truncated", None)),
        "source_decode_error": getattr(source, "decode_error", None),
    }


def _warnings(name: str, info: dict[str, Any]) -> list[str]:
    """One line per thing in this run that fell back or came out short (also in run.json)."""
    out: list[str] = []
    if info.get("source_truncated"):
        out.append(
            f"{name}: the container declares {info['source_frames_declared']} frames but only "
            f"{info['source_frames_decoded']} could be decoded (truncated or damaged file)"
        )
    w = info["windows"]
    if w["constant_depth_scale_zero"]:
        out.append(
            f"{name}: {w['constant_depth_scale_zero']} of {w['count']} windows had constant depth on their "
            f"alignment frames and were given scale 0"
        )
    if w["cameras_unchained_non_finite"]:
        out.append(
            f"{name}: {w['cameras_unchained_non_finite']} of {w['count']} windows had non-finite camera poses "
            f"and were not chained (identity similarity)"
        )
    return out
