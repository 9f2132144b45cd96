"""Export timings and parity: one window of a preset as ONNX and as a torch.export program, on CPU.

    python benchmarks/bench_export.py --model vda-vits --frames 8 --height 196 --width 350 --threads 2

Weights are random (seeded; the timings and numerical parity do not depend on the values),
unless ``--ckpt`` gives a file. Prints: export time per format, eager PyTorch vs ONNX Runtime vs
exported-program time for one window (median of ``--repeats`` after one warm-up), and the largest
absolute and relative differences from eager (depth, and cameras for GEM models).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gemdepth.export import OnnxWindowModel, export_onnx, export_program
from gemdepth.models import build_model


def _median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vda-vits")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=196)
    p.add_argument("--width", type=int, default=350)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="keep the exported files in this folder")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt:
        import gemdepth

        model = gemdepth.load_model(args.ckpt, config=args.model)
    else:
        model = build_model(args.model).eval()
        with torch.no_grad():
            model.head.scratch.output_conv2[2].bias.fill_(1.0)  # positive depth: relative errors are meaningful
    folder = args.out or Path(tempfile.mkdtemp(prefix="gemdepth-export-"))
    folder.mkdir(parents=True, exist_ok=True)
    size = {"frames": args.frames, "height": args.height, "width": args.width}
    onnx_report = export_onnx(model, folder / f"{args.model}.onnx", **size)
    program_report = export_program(model, folder / f"{args.model}.pt2", **size)
    video = torch.randn(1, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(2))
    runner = OnnxWindowModel(folder / f"{args.model}.onnx", threads=args.threads)
    program = torch.export.load(folder / f"{args.model}.pt2").module()
    with torch.inference_mode():
        eager_s = _median_seconds(lambda: model(video), args.repeats)
        program_s = _median_seconds(lambda: program(video), args.repeats)
    ort_s = _median_seconds(lambda: runner.run(video), args.repeats)
    result = {
        "model": args.model,
        "window": size,
        "threads": args.threads,
        "torch": torch.__version__,
        "export_seconds": {"onnx": round(onnx_report.seconds, 1), "exported_program": round(program_report.seconds, 1)},
        "window_seconds": {"eager": round(eager_s, 3), "onnxruntime": round(ort_s, 3),
                           "exported_program": round(program_s, 3)},
        "parity": {"onnx": onnx_report.differences, "exported_program": program_report.differences},
        "onnx_bytes": (folder / f"{args.model}.onnx").stat().st_size,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
