"""``gemdepth infer``: run a model on videos, frame folders or folders of videos.

Examples::

    gemdepth infer clip.mp4 --ckpt gemdepth.safetensors --out results/
    gemdepth infer frames/ videos/ --ckpt gemdepth_vitl.pth --model gemdepth-vda-vitl --out results/ --png16
    gemdepth infer clip.mp4 --model vda-vits-metric --out results/   # released weights from the Hub cache
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gemdepth.atomic import unwritable_reason
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
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="video file(s), frame folder(s), folder(s) of videos, cameras (/dev/videoN) or stream URLs "
        "(rtsp://, http://, ...)",
    )
    p.add_argument(
        "--ckpt",
        default=None,
        help="gemdepth checkpoint, or an official .pth/.safetensors (with --model); without it, --model PRESET's "
        "released weights are taken from the Hugging Face Hub cache (downloaded once; see `gemdepth models`)",
    )
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
        "--ply-focal",
        type=float,
        default=470.4,
        help="metric models without cameras: focal length in pixels for frame 0's points.ply (default 470.4, "
        "the official metric VDA default)",
    )
    p.add_argument(
        "--no-chain-cameras",
        action="store_true",
        help="keep the official per-window poses instead of chaining windows by similarity",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    live = p.add_argument_group("online (one frame at a time)")
    live.add_argument(
        "--online",
        action="store_true",
        help="streaming inference: each frame's depth from one encoder pass and a bounded cache of the past "
        "(no future frames), with a per-frame latency log (latency.csv); see docs/online.md",
    )
    live.add_argument(
        "--online-window",
        type=int,
        default=None,
        help="frames the online cache holds (default: the model's training window)",
    )
    live.add_argument(
        "--open-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a camera or network stream to open / deliver data (default 10)",
    )
    speed = p.add_argument_group("speed and memory")
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (inductor): the first windows compile (minutes); the gain is on GPUs "
        "(on CPU fp32 it measured within noise of eager); "
        "falls back to eager with a warning where the compiler cannot run",
    )
    speed.add_argument(
        "--max-memory",
        default=None,
        help="activation budget of each per-frame stage of a window, e.g. 512MB, 2GB, or 'none' for no limit "
        "(default: 64MB on CPU; on CUDA 1/16 of the card's memory, at most 2GB); smaller uses less memory, "
        "same output",
    )
    speed.add_argument(
        "--low-memory",
        action="store_true",
        help="give freed activations back to the OS at once (glibc): lower peak host memory "
        "(one 518x686 window, CPU: GemDepth-VDA ViT-L 8 frames 4086 -> 3897 MiB), 10-20%% more CPU time",
    )
    speed.add_argument(
        "--no-encoder-cache",
        action="store_true",
        help="re-encode the carried key frames in every window, as the official code (same output, slower)",
    )
    return p


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gemdepth infer: --device cuda asked for, but no CUDA device is available (use --device cpu)")
    return name


_WRITE_FIXES = {
    errno.ENOSPC: "free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another --out",
    errno.EROFS: "the filesystem is read-only; choose another --out",
    errno.EACCES: "choose a writable --out folder",
    errno.EPERM: "choose a writable --out folder",
    errno.ENOTDIR: "move it away or choose another --out",
}


def check_out(out: Path) -> str | None:
    """Why ``--out`` cannot take results (``None``: it can); checked before any input is read."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder; give a folder (it is created if missing)"
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"--out {out}: {existing} is a file, not a folder; choose another --out"
    why = unwritable_reason(existing) if existing is not None else None
    if why:
        return f"--out {out}: {existing} is not writable ({why}); choose a writable folder"
    return None


def write_error_message(err: OSError, folder: Path) -> str:
    """``cannot write PATH: cause; fix`` for an OSError met while writing ``folder``."""
    where = err.filename or folder
    cause = err.strerror or str(err)
    fix = _WRITE_FIXES.get(err.errno or 0, "check the output folder")
    return f"cannot write {where}: {cause}; {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gemdepth infer``; returns 0 when every input succeeded, 1 otherwise, 2 on usage errors.

    Inputs are independent: one that cannot be read or written is reported (the file and the
    cause, no traceback) and the next one is still run (a failed run's temporaries are deleted
    first, so the space they took is free again). Nothing partial is left under a final name."""
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
        cache_encoder=not args.no_encoder_cache,
        online=args.online,
        online_window=args.online_window,
    )
    outputs = OutputOptions(
        npz=not args.no_npz,
        video=not args.no_video,
        ply=not args.no_ply,
        png16=args.png16,
        exr=args.exr,
        ply_voxel=args.ply_voxel,
        ply_max_points=args.ply_max_points,
        ply_focal=args.ply_focal,
        progress=not args.no_progress,
        extra_run_info={"checkpoint": str(args.ckpt), "model": args.model},
    )
    if args.ckpt is None:
        from gemdepth.weights.hub import ZOO

        if args.model not in ZOO:
            given = f"--model {args.model!r} has no released weights" if args.model else "no --ckpt"
            print(
                f"gemdepth infer: {given}: pass --ckpt FILE, or --model with one of {', '.join(ZOO)} "
                f"(their weights come from the Hugging Face Hub)",
                file=sys.stderr,
            )
            return 2
    try:  # settings errors before any work
        from gemdepth.inference.windowing import WindowConfig

        WindowConfig(args.window, args.overlap, None, args.interp)
        if args.online_window is not None and args.online_window < 2:
            raise ValueError(f"--online-window must be at least 2 frames (anchor + newest), got {args.online_window}")
        if args.max_memory is not None:
            from gemdepth.models.chunking import parse_memory

            try:
                parse_memory(args.max_memory)
            except ValueError as err:
                raise ValueError(f"--max-memory: {err}") from None
    except ValueError as err:
        print(f"gemdepth infer: {err}", file=sys.stderr)
        return 2
    problem = check_out(args.out)
    if problem:
        print(f"gemdepth infer: {problem}", file=sys.stderr)
        return 2

    # open (probe) every input first, so bad inputs are reported before any model time is spent
    sources, failures = [], 0
    from gemdepth.inference.online_sources import is_live, open_live_source

    for path in find_inputs([i for i in args.inputs if not is_live(i)]) + [i for i in args.inputs if is_live(i)]:
        try:
            if is_live(path):
                sources.append(
                    open_live_source(
                        str(path), start=args.start, end=args.end, stride=args.stride, fps=args.fps,
                        max_resolution=args.max_res, timeout=args.open_timeout,
                    )
                )
                continue
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
        except OSError as err:  # e.g. a folder that cannot be listed
            print(f"gemdepth infer: {err.filename or path}: cannot be read ({err.strerror or err})", file=sys.stderr)
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

    weights = args.ckpt
    if weights is None:  # a preset's released weights, from the Hub cache
        from gemdepth.weights.hub import resolve_weights, weights_for

        try:
            weights = str(resolve_weights(args.model))
        except FileNotFoundError as err:
            print(f"gemdepth infer: {err}", file=sys.stderr)
            return 2
        hub = weights_for(args.model)
        outputs.extra_run_info |= {"checkpoint": weights, "hub": {"repo_id": hub.repo_id, "filename": hub.filename,
                                                                  "licence": hub.licence}}
    try:
        model = gemdepth.load_model(weights, config=args.model, device=inference.device)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        print(f"gemdepth infer: cannot load {weights}: {err}", file=sys.stderr)
        return 2
    model.eval()
    if args.low_memory:
        from gemdepth.models.chunking import return_freed_memory

        if not return_freed_memory():
            log.warning("--low-memory: this platform's C allocator has no mallopt (glibc only); ignored")
        outputs.extra_run_info["low_memory"] = True
    if args.max_memory is not None:
        if not callable(getattr(model, "set_max_memory", None)):
            log.warning("--max-memory: this model has no memory budget; ignored")
        else:
            outputs.extra_run_info["max_memory_bytes"] = model.set_max_memory(args.max_memory)
    if args.compile:
        from gemdepth.compile import compile_model, is_compiled

        model = compile_model(model)  # warns and stays eager where the compiler cannot run
        outputs.extra_run_info["compiled"] = is_compiled(model)

    for src in sources:
        try:
            info = run_source(model, src, args.out, inference, outputs)
        except OSError as err:  # writing the outputs failed; the temporaries are gone already
            print(f"gemdepth infer: {src.path}: {write_error_message(err, args.out / src.name)}", file=sys.stderr)
            failures += 1
            continue
        except (InputError, ValueError, RuntimeError) as err:
            print(f"gemdepth infer: {src.path}: {err}", file=sys.stderr)
            failures += 1
            continue
        except Exception as err:  # noqa: BLE001 - one input's unexpected failure must not drop the others
            log.debug("traceback of %s", src.path, exc_info=True)
            print(f"gemdepth infer: {src.path}: failed ({type(err).__name__}: {err})", file=sys.stderr)
            failures += 1
            continue
        short = (
            f" [{info['source_frames_decoded']} of {info['source_frames_declared']} declared frames decoded: "
            f"truncated file]"
            if info.get("source_truncated")
            else ""
        )
        print(
            f"{src.name}: {info['frames']} frames at {info['frames_per_second']} frames/s → "
            f"{args.out / src.name} ({', '.join(info['outputs'])}){short}"
        )
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
