"""What ``torch.compile`` (inductor) buys for one forward: eager and compiled runs alternating in one
process (so load changes hit both alike), compile time reported apart, outputs compared.

    python benchmarks/bench_compile.py --preset gemdepth-vda-vits --size 196x350 --frames 8 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gemdepth-vda-vits", help="preset name or model YAML (random weights)")
    p.add_argument("--size", default="196x350", help="network input HxW (multiples of 14)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per mode, alternating")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)

    from gemdepth.compile import CompiledCall, compile_unavailable
    from gemdepth.models import build_model

    reason = compile_unavailable(device)
    if reason is not None:
        p.error(f"torch.compile cannot run here: {reason}")
    torch.manual_seed(0)
    model = build_model(args.preset).to(device).eval()
    video = torch.randn(1, args.frames, 3, height, width, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    compiled = CompiledCall(model, f"{args.preset} forward", mode=args.mode, dynamic=False)

    def timed(fn) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn(video)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out.depth

    with torch.inference_mode(), autocast:
        eager_first, ref = timed(model)
        compile_s, got = timed(compiled)
        if compiled.failed is not None:
            p.error(f"compilation failed: {compiled.failed}")
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            times["eager"].append(timed(model)[0])
            times["compiled"].append(timed(compiled)[0])
            print(f"eager {times['eager'][-1]:.3f} s, compiled {times['compiled'][-1]:.3f} s", file=sys.stderr)
    eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
    row = {
        "preset": args.preset,
        "input": [args.frames, height, width],
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "mode": args.mode,
        "compile_s": round(compile_s, 1),
        "eager_ms_median": round(eager * 1000, 1),
        "compiled_ms_median": round(comp * 1000, 1),
        "compiled_over_eager": round(comp / eager, 3),
        "all_s": times,
        "max_relative_difference": float((got.float() - ref.float()).abs().max() / ref.float().abs().max()),
    }
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
