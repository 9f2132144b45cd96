"""Command line of ``gemdepth app``.

Examples::

    gemdepth app                                    # untrained mini model: try the app itself
    gemdepth app --ckpt gemdepth.safetensors        # a checkpoint (config embedded)
    gemdepth app --model vda-vits                   # released weights from the Hub cache
    gemdepth app --results results/                 # look at `gemdepth infer --out results/` outputs
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gemdepth app",
        description="A web app (Gradio) to run the model on a video or a zip of frames and look at the depth, "
        "the cameras and the fused point cloud; or, with --results, at existing `gemdepth infer` outputs.",
    )
    p.add_argument("--ckpt", action="append", default=[], metavar="PATH",
                   help="checkpoint to offer (repeatable); official weights need --model")
    p.add_argument("--model", default=None, metavar="PRESET",
                   help="with --ckpt: its config (preset or YAML); alone: a preset whose released weights are "
                   "fetched from the Hub cache (untrained random weights if it has none)")
    p.add_argument("--results", type=Path, action="append", default=[], metavar="OUT",
                   help="open existing `gemdepth infer` outputs (an --out folder or one video's folder); "
                   "with no --ckpt/--model no model is loaded")
    p.add_argument("--no-mini", action="store_true", help="do not offer the untrained mini model")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--max-frames", type=int, default=600, help="most frames one run may process (default 600)")
    p.add_argument("--max-res", type=int, default=1280,
                   help="downscale frames whose longest side exceeds this (default 1280; 0: never)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest upload in MB (default 500)")
    p.add_argument("--max-view-points", type=int, default=200_000,
                   help="points shown in the 3D viewer (default 200000)")
    p.add_argument("--no-samples", action="store_true", help="do not render the synthetic samples at start-up")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    return p


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gemdepth app: --device cuda asked for, but no CUDA device is available (use --device cpu)")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gemdepth app``: serves until interrupted; 2 on usage errors."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('gemdepth app: needs Gradio: pip install "gemdepth[app]"', file=sys.stderr)
        return 2
    from gemdepth.app.inputs import AppLimits
    from gemdepth.app.models import choices_from_args
    from gemdepth.app.results import ResultError, find_results
    from gemdepth.app.ui import AppSettings, GemDepthApp

    results: list[Path] = []
    try:
        for root in args.results:
            results += find_results(root)
        results_only = bool(args.results) and not args.ckpt and not args.model
        choices = [] if results_only else choices_from_args(args.ckpt, args.model, mini=not args.no_mini)
    except (ResultError, FileNotFoundError, KeyError) as err:
        print(f"gemdepth app: {err}", file=sys.stderr)
        return 2
    if not choices and not results:
        print("gemdepth app: nothing to offer: give --ckpt, --model or --results (or drop --no-mini)", file=sys.stderr)
        return 2
    settings = AppSettings(
        choices=choices,
        results=results,
        device=_device(args.device),
        limits=AppLimits(max_frames=args.max_frames, max_resolution=args.max_res or None,
                         max_upload_mb=args.max_upload_mb),
        samples=not args.no_samples,
        max_view_points=args.max_view_points,
    )
    app = GemDepthApp(settings)

    def _stop(signum: int, frame: object) -> None:  # SIGTERM ends the server like Ctrl-C: temp files removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        demo = app.build()
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    max_file_size=int(args.max_upload_mb * 2**20), show_error=False)
    finally:
        app.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
