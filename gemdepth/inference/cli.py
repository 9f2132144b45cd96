"""``gemdepth infer``: run a model on videos, frame folders or folders of videos.

Examples::

    gemdepth infer clip.mp4 --ckpt gemdepth.safetensors --out results/
    gemdepth infer frames/ videos/ --ckpt gemdepth_vitl.pth --model gemdepth-vda-vitl --out results/ --png16
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gemdepth.inference.pipeline import InferenceOptions, OutputOptions, run_source
from gemdepth.inference.readers import InputError, find_inputs, open_source
from gemdepth.inference.writers import exr_available

__all__ = ["build_parser", "main"]

log = logging.getLogger("gemdepth.infer")

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gemdepth infer",
        description="Depth, cameras and a fused point cloud for videos, with the official long-video windowing, "
        "streamed in bounded memory. Outputs go to OUT/<video name>/.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video file(s), frame folder(s), or folder(s) of videos")
    p.add_argument("--ckpt", required=True, help="gemdepth checkpoint, or an official .pth/.safetensors (with --model)")
    p.add_argument("--model", default=None, help="model preset name or YAML (needed for official weights)")
    p.add_argument("--out", required=True, type=Path, help="output root folder")
    p.add_argument("--input-size", type=int, default=518, help="network input size (short side), default 518")
    p.add_argument("--max-res", type=int, default=None, help="downscale frames whose longest side exceeds this")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, default=None, help="target frame rate (keeps every round(src/fps)-th frame)")
    rate.add_argument("--stride", type=int, default=None, help="keep every S-th frame")
    p.add_argument("--start", type=int, default=0, help="first source frame (default 0)")
    p.add_argument("--end", type=int, default=None, help="source frame to stop before (default: the end)")
    p.add_argument("--folder-fps", type=float, default=30.0, help="frame rate of frame folders (default 30)")
    p.add_argument("--window", type=int, default=32, help="frames per window (default 32)")
    p.add_argument("--overlap", type=int, default=10, help="frames shared by consecutive windows (default 10)")
    p.add_argument("--interp", type=int, default=8, help="cross-faded frames (default 8)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--png16", action="store_true", help="also write 16-bit PNG disparity frames")
    p.add_argument("--exr", action="store_true", help="also write float32 EXR disparity frames (needs OpenEXR)")
    p.add_argument("--no-npz", action="store_true", help="skip depth.npz")
    p.add_argument("--no-video", action="store_true", help="skip depth.mp4")
    p.add_argument("--no-ply", action="store_true", help="skip points.ply")
    cloud = p.add_mutually_exclusive_group()
    cloud.add_argument("--ply-voxel", type=float, default=None, help="voxel size of the fused cloud (relative units)")
    cloud.add_argument("--ply-max-points", type=int, default=1_000_000, help="at most this many points (default 1e6)")
    p.add_argument(
        "--no-chain-cameras",
        action="store_true",
        help="keep the official per-window poses instead of chaining windows by similarity",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gemdepth infer: --device cuda asked for, but no CUDA device is available (use --device cpu)")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gemdepth infer``; returns 0 when every input succeeded, 1 otherwise, 2 on usage errors."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.exr and not exr_available():
        print("gemdepth infer: --exr needs the OpenEXR package (pip install OpenEXR); or use --png16", file=sys.stderr)
        return 2
    inference = InferenceOptions(
        input_size=args.input_size,
        window=args.window,
        overlap=args.overlap,
        interp=args.interp,
        device=_device(args.device),
        dtype=PRECISIONS[args.precision],
        chain_cameras=not args.no_chain_cameras,
    )
    outputs = OutputOptions(
        npz=not args.no_npz,
        video=not args.no_video,
        ply=not args.no_ply,
        png16=args.png16,
        exr=args.exr,
        ply_voxel=args.ply_voxel,
        ply_max_points=args.ply_max_points,
        progress=not args.no_progress,
        extra_run_info={"checkpoint": str(args.ckpt), "model": args.model},
    )
    try:  # settings errors before any work
        from gemdepth.inference.windowing import WindowConfig

        WindowConfig(args.window, args.overlap, None, args.interp)
    except ValueError as err:
        print(f"gemdepth infer: {err}", file=sys.stderr)
        return 2

    # open (probe) every input first, so bad inputs are reported before any model time is spent
    sources, failures = [], 0
    for path in find_inputs(args.inputs):
        try:
            sources.append(
                open_source(
                    path,
                    start=args.start,
                    end=args.end,
                    stride=args.stride,
                    fps=args.fps,
                    max_resolution=args.max_res,
                    folder_fps=args.folder_fps,
                )
            )
        except (InputError, ValueError) as err:
            print(f"gemdepth infer: {err}", file=sys.stderr)
            failures += 1
    names: dict[str, Path] = {}
    for src in list(sources):
        if src.name in names:
            print(
                f"gemdepth infer: {src.path} and {names[src.name]} would both write to {args.out / src.name}; "
                f"rename one of them",
                file=sys.stderr,
            )
            sources.remove(src)
            failures += 1
        else:
            names[src.name] = src.path
    if not sources:
        return 1

    import gemdepth

    try:
        model = gemdepth.load_model(args.ckpt, config=args.model, device=inference.device)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"gemdepth infer: cannot load {args.ckpt}: {err}", file=sys.stderr)
        return 2
    model.eval()

    for src in sources:
        try:
            info = run_source(model, src, args.out, inference, outputs)
        except (InputError, ValueError, RuntimeError) as err:
            print(f"gemdepth infer: {src.path}: {err}", file=sys.stderr)
            failures += 1
            continue
        print(
            f"{src.name}: {info['frames']} frames at {info['frames_per_second']} frames/s → "
            f"{args.out / src.name} ({', '.join(info['outputs'])})"
        )
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
