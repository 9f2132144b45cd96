"""Encoder passes per output frame and wall time of the windowed inference, encoder cache on vs off.

Runs :func:`gemdepth.infer_video` in one process on the same procedural frames, alternating
cached / uncached runs (so load changes hit both alike), with a forward hook on the encoder
counting the frames it processes. Also reports the largest difference between the two outputs.

    python benchmarks/bench_encoder_cache.py --preset gemdepth-vda-vits --frames 76 --size 196x350 --input-size 196
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def frames_of(n: int, height: int, width: int) -> list[np.ndarray]:
    """A smooth moving pattern (uint8 RGB)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    return [
        (255 * (0.5 + 0.4 * np.sin(np.stack([9 * xx + 0.2 * t, 7 * yy - 0.15 * t, 5 * (xx + yy) + 0.1 * t], -1))))
        .astype(np.uint8)
        for t in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gemdepth-vda-vits", help="preset name or model YAML (random weights)")
    p.add_argument("--frames", type=int, default=76)
    p.add_argument("--size", default="196x350", help="frame size HxW")
    p.add_argument("--input-size", type=int, default=196)
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the model first (both modes)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))

    from gemdepth.inference import infer_video
    from gemdepth.models import build_model

    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    if args.compile:
        from gemdepth.compile import compile_model

        compile_model(model)
    count = [0]
    model.encoder.register_forward_hook(lambda m, a, o: count.__setitem__(0, count[0] + int(a[0].shape[0])))
    frames = frames_of(args.frames, height, width)
    times: dict[bool, list[float]] = {True: [], False: []}
    passes: dict[bool, float] = {}
    depth: dict[bool, np.ndarray] = {}
    for _ in range(args.repeats):
        for cached in (False, True):
            count[0] = 0
            start = time.perf_counter()
            results = list(infer_video(model, frames, input_size=args.input_size, cache_encoder=cached))
            times[cached].append(time.perf_counter() - start)
            passes[cached] = count[0] / args.frames
            depth[cached] = np.stack([r.depth for r in results])
            print(f"cache={cached}: {times[cached][-1]:.2f} s", file=sys.stderr, flush=True)
    diff = float(np.abs(depth[True] - depth[False]).max() / max(np.abs(depth[False]).max(), 1e-12))
    row = {
        "preset": args.preset,
        "frames": args.frames,
        "size": [height, width],
        "input_size": args.input_size,
        "threads": torch.get_num_threads(),
        "compiled": args.compile,
        "encoder_frames_per_output_frame": {"uncached": passes[False], "cached": passes[True]},
        "seconds_median": {"uncached": statistics.median(times[False]), "cached": statistics.median(times[True])},
        "seconds_all": {"uncached": times[False], "cached": times[True]},
        "time_ratio_cached_over_uncached": statistics.median(times[True]) / statistics.median(times[False]),
        "max_relative_depth_difference": diff,
    }
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
