"""Time every gemdepth metric on one long synthetic sequence (default 500 frames, 518×686).

The sequence is a camera moving and turning inside a box room (exact depth from ray-box
intersections, so the poses and depth agree); the prediction is the true disparity, affinely
transformed, with 2 % multiplicative noise. Each metric is timed on its own (``update`` +
``compute``, alignment included: the alignment cache is cleared in between), and the peak
memory of each is reported: on CUDA ``torch.cuda.max_memory_allocated`` above the inputs, on
CPU the peak resident set size above the baseline (``VmHWM`` after resetting it through
``/proc/self/clear_refs``).

Usage::

    python benchmarks/bench_metrics.py                       # CPU, 500 × 518 × 686
    python benchmarks/bench_metrics.py --device cuda --json out.json
    python benchmarks/bench_metrics.py --frames 100 --metrics tae tcd
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gemdepth.geometry import compose_extrinsics
from gemdepth.metrics import ATE, TAE, TCD, DepthMetrics, F1Score, align_sequence, clear_alignment_cache
from gemdepth.metrics.align import AlignConfig


def rotation_y(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
                        torch.stack([-s, zero, c], -1)], -2)


def make_sequence(frames: int, height: int, width: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Depth, prediction, intrinsics, ground-truth and (noisy) predicted extrinsics."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float64)
    yaw = 0.4 * torch.sin(t / 60.0)
    centre = torch.stack([1.5 * torch.sin(t / 80.0), 0.1 * torch.sin(t / 13.0), 1.0 * torch.sin(t / 50.0)], -1)
    r_c2w = rotation_y(yaw)
    r_w2c = r_c2w.transpose(-1, -2)
    extr = compose_extrinsics(r_w2c, -(r_w2c @ centre[..., None])[..., 0])
    focal = 0.8 * width
    K = torch.tensor([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    intr = K.expand(frames, 3, 3).clone()
    box = torch.tensor([[-4.0, 4.0], [-2.5, 2.5], [-3.0, 9.0]], dtype=torch.float64)

    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(K).T  # (H, W, 3), z = 1
    depth = torch.empty(frames, height, width, dtype=torch.float32)
    for a in range(0, frames, 16):  # chunks of frames (memory), vectorised over pixels
        b = min(a + 16, frames)
        d_w = torch.einsum("hwk,fjk->fhwj", rays, r_c2w[a:b])  # R_c2w · ray
        best = torch.full(d_w.shape[:-1], math.inf, dtype=torch.float64)
        for axis in range(3):
            for bound in box[axis]:
                lam = (bound - centre[a:b, axis, None, None]) / d_w[..., axis]
                best = torch.where((lam > 1e-9) & (lam < best), lam, best)
        depth[a:b] = best.float()
    noise = 1 + 0.02 * torch.randn(frames, height, width, generator=gen)
    pred = (2.5 / depth) * noise + 0.1
    pred_extr = extr.clone()
    pred_extr[:, :3, 3] += 0.01 * torch.randn(frames, 3, generator=gen, dtype=torch.float64)
    pred_extr[:, :3, 3] *= 0.5  # GEM's translations are up to scale
    return {
        "pred": pred.to(device), "gt": depth.to(device), "K": intr.float().to(device),
        "E": extr.float().to(device), "pred_E": pred_extr.float().to(device),
    }


# ----------------------------------------------------------------------------- memory probes
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def _reset_peak(device: torch.device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_kib("VmRSS:") * 1024


def _peak(device: torch.device, base: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _rss_kib("VmHWM:") * 1024 - base


def run(name: str, fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    clear_alignment_cache()
    base = _reset_peak(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = _peak(device, base)
    if isinstance(value, dict):
        value = {k: float(v) for k, v in value.items()}
    elif isinstance(value, torch.Tensor):
        value = float(value)
    row = {"metric": name, "seconds": round(seconds, 3), "peak_extra_mib": round(peak / 2**20, 1), "value": value}
    print(f"{name:<28} {seconds:9.2f} s   peak +{peak / 2**20:8.1f} MiB   {value}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--height", type=int, default=518)
    parser.add_argument("--width", type=int, default=686)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tcd-points", type=int, default=4096, help="TCD subsample per frame")
    parser.add_argument("--f1-points", type=int, default=200, help="F1 subsample per frame")
    parser.add_argument("--f1-threshold", type=float, default=0.25, help="metres (depth noise is 2 %%)")
    parser.add_argument("--max-depth", type=float, default=20.0)
    parser.add_argument("--metrics", nargs="+", default=["align", "depth", "tae", "tae_ref", "tcd", "ate", "f1"])
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    seq = make_sequence(args.frames, args.height, args.width, device)
    print(f"synthetic sequence {args.frames}×{args.height}×{args.width} on {device} in "
          f"{time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    p, g, K, E, pE = seq["pred"], seq["gt"], seq["K"], seq["E"], seq["pred_E"]
    md = args.max_depth
    jobs: dict[str, Callable[[], Any]] = {
        "align": lambda: align_sequence(p, g, None, AlignConfig(max_depth=md), use_cache=False).scale,
        "depth": lambda: _update_compute(DepthMetrics(max_depth=md), p, g, None, K, E),
        "tae": lambda: _update_compute(TAE(max_depth=md), p, g, None, K, E),
        "tae_ref": lambda: _update_compute(TAE.vda_reference(max_depth=md), p, g, None, K, E),
        "tcd": lambda: _update_compute(TCD(max_depth=md, num_points=args.tcd_points), p, g, None, K, E),
        "ate": lambda: _ate(pE, E),
        "f1": lambda: _update_compute(
            F1Score(threshold=args.f1_threshold, max_depth=md, num_points=args.f1_points, return_components=True),
            p, g, None, K, E, pred_extrinsics=pE),
    }
    labels = {"align": "alignment only", "depth": "DepthMetrics (AbsRel…RMSE)", "tae": "TAE",
              "tae_ref": "TAE (vda_reference)", "tcd": f"TCD (num_points={args.tcd_points})", "ate": "ATE",
              "f1": f"F1 (num_points={args.f1_points})"}
    rows = []
    for key in args.metrics:
        if key not in jobs:
            parser.error(f"unknown metric {key!r}; choose from {list(jobs)}")
        rows.append(run(labels[key], jobs[key], device))
    result = {
        "frames": args.frames, "height": args.height, "width": args.width, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "results": rows,
    }
    if args.json is not None:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.json)
    return 0


def _update_compute(metric: Any, *args: Any, **kwargs: Any) -> Any:
    metric = metric.to(args[0].device)
    metric.update(*args, **kwargs)
    return metric.compute()


def _ate(pred_e: torch.Tensor, gt_e: torch.Tensor) -> Any:
    metric = ATE().to(pred_e.device)
    metric.update(pred_e, gt_e)
    return metric.compute()


if __name__ == "__main__":
    sys.exit(main())
