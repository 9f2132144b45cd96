"""Inference on videos of any length: streaming windowing, readers, writers, ``gemdepth infer``.

* :func:`infer_video` — the official long-video windowing, streamed: frames in (any iterable
  of uint8 ``(H, W, 3)`` arrays), :class:`FrameResult` per frame out, bounded memory.
* :func:`open_source` — lazy, checked readers for video files and image folders.
* :func:`run_source` — one source through a model into an output folder (depth.npz,
  depth.mp4, cameras, points.ply, …); ``gemdepth infer`` is its command line.
"""

from gemdepth.inference.pipeline import InferenceOptions, OutputOptions, run_source
from gemdepth.inference.pointcloud import PointCloudFuser, write_ply
from gemdepth.inference.preprocess import network_size, preprocess_frames
from gemdepth.inference.readers import FrameSource, InputError, find_inputs, open_source
from gemdepth.inference.windowing import (
    OFFICIAL_KEYFRAMES,
    FrameResult,
    VideoInference,
    WindowConfig,
    WindowInfo,
    infer_video,
)

__all__ = [
    "OFFICIAL_KEYFRAMES",
    "FrameResult",
    "FrameSource",
    "InferenceOptions",
    "InputError",
    "OutputOptions",
    "PointCloudFuser",
    "VideoInference",
    "WindowConfig",
    "WindowInfo",
    "find_inputs",
    "infer_video",
    "network_size",
    "open_source",
    "preprocess_frames",
    "run_source",
    "write_ply",
]
