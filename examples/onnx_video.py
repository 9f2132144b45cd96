"""Run an exported ONNX window model on a whole video with ONNX Runtime, through gemdepth's windowing.

    gemdepth export model.onnx --ckpt gemdepth.pth --model gemdepth-vda-vitl --frames 32
    python examples/onnx_video.py model.onnx clip.mp4 --out clip_depth.npz

The ONNX graph is one window (T frames, any H and W that are multiples of 14). The long-video
algorithm (overlapping windows, carried key frames, scale/shift alignment, cross-fade, camera
chaining) is the same streaming code as ``gemdepth infer``: :func:`gemdepth.infer_video` takes
any callable that maps a window to depth, and :class:`gemdepth.export.OnnxWindowModel` is one.
Writes ``depth`` (float16, T×H×W at the frame size; metric models: metres, else relative
disparity) and, for models with cameras, ``extrinsics`` and ``intrinsics`` to an ``.npz``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gemdepth.atomic import atomic_path
from gemdepth.export import OnnxWindowModel
from gemdepth.inference import infer_video, open_source
from gemdepth.training.task import window_settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="ONNX file written by `gemdepth export`")
    p.add_argument("video", type=Path, help="video file or frame folder")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.add_argument("--input-size", type=int, default=518, help="network input size (short side)")
    p.add_argument("--max-res", type=int, default=None, help="downscale frames larger than this first")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    runner = OnnxWindowModel(args.model, threads=args.threads)
    window, overlap, interp = window_settings(runner.max_frames)  # 32 → the official 32 / 10 / 8
    source = open_source(args.video, max_resolution=args.max_res)
    depths, extrinsics, intrinsics = [], [], []
    start = time.perf_counter()
    for result in infer_video(runner, source, input_size=args.input_size, window=window, overlap=overlap,
                              interp=interp, device="cpu"):
        depths.append(result.depth.astype(np.float16))
        if result.extrinsics is not None:
            extrinsics.append(result.extrinsics)
            intrinsics.append(result.intrinsics)
    seconds = time.perf_counter() - start
    arrays = {"depth": np.stack(depths), "units": np.array("metres" if runner.is_metric else "relative_disparity")}
    if extrinsics:
        arrays |= {"extrinsics": np.stack(extrinsics), "intrinsics": np.stack(intrinsics)}
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    print(f"{len(depths)} frames in {seconds:.1f} s ({len(depths) / seconds:.2f} frames/s) with ONNX Runtime, "
          f"windows of {window} (overlap {overlap}, cross-fade {interp}) → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
