"""Readers and writers of ``gemdepth infer`` in one namespace.

The code lives in :mod:`gemdepth.inference.readers` (video files via PyAV, image folders),
:mod:`gemdepth.inference.writers` (depth.npz, PNG16/EXR frames, depth.mp4, cameras) and
:mod:`gemdepth.inference.pointcloud` (fused, voxel-downsampled PLY).
"""

from gemdepth.inference.pointcloud import PointCloudFuser, write_ply
from gemdepth.inference.readers import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameSource,
    ImageFolderSource,
    InputError,
    VideoFileSource,
    find_inputs,
    natural_key,
    open_source,
    resize_max_side,
)
from gemdepth.inference.writers import (
    CamerasWriter,
    DepthNpzWriter,
    DepthRange,
    DepthVideoWriter,
    ExrWriter,
    Png16Writer,
    colorize,
    exr_available,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CamerasWriter",
    "DepthNpzWriter",
    "DepthRange",
    "DepthVideoWriter",
    "ExrWriter",
    "FrameSource",
    "ImageFolderSource",
    "InputError",
    "Png16Writer",
    "PointCloudFuser",
    "VideoFileSource",
    "colorize",
    "exr_available",
    "find_inputs",
    "natural_key",
    "open_source",
    "resize_max_side",
    "write_ply",
]
