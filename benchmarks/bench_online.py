"""Online (streaming) inference: flat latency and memory, and accuracy against offline windowing.

Two measurements (see docs/online.md for the results and the commands that produced them):

``latency``: one stream of ``--frames`` frames through ``gemdepth.stream`` on a preset's
architecture (seeded random weights: the cost does not depend on them), on CPU by default. It
reports the median per-frame latency over frames 51-100 and over the last 50 frames, the mean
over the first 100 and over all frames, and the process RSS after frame 100 and after the last
frame (psutil or /proc), with the 1000-vs-100 ratios the issue asks to keep ≤ 1.1.

``accuracy``: the same weights offline (``infer_video``, the official windowing) and online
(``gemdepth.stream``, aligned and raw) on the held-out synthetic sequences of a ``gemdepth demo``
run (``--demo DIR``: its ``shards/synthetic_val`` and its stage-2 checkpoint, or ``--ckpt``), and on
the shared real TUM sample when present (``--tum``), scored with the project's AbsRel, δ1 and TAE.

    python benchmarks/bench_online.py latency --model gemdepth-vda-vits --input-size 112 --frames 1000
    python benchmarks/bench_online.py accuracy --demo outputs/demo --tum ../shared/fixtures/real/tum_fr1_xyz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("AbsRel", "Delta1", "TAE")


def _rss_mb() -> float:
    """Resident memory of this process now (not the peak): psutil where installed, else /proc (Linux)."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return psutil.Process().memory_info().rss / 2**20


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Per-frame latency and RSS of one long stream."""
    import torch

    import gemdepth
    from gemdepth.models import build_model

    torch.manual_seed(0)
    model = build_model(args.model).eval().to(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    s = gemdepth.stream(model, input_size=args.input_size, window=args.window, device=args.device, dtype=dtype)
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(16)]
    times: list[float] = []
    cpu: list[float] = []  # this thread's CPU time per frame: robust to other processes on a shared machine
    rss: dict[int, float] = {}
    state: dict[int, int] = {}
    for i in range(args.frames):
        start, start_cpu = time.perf_counter(), time.thread_time()
        s.step(pool[i % len(pool)])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        if i + 1 in (100, args.frames):
            rss[i + 1] = _rss_mb()
            state[i + 1] = sum(s.state_bytes().values())
    ms = np.asarray(times) * 1e3
    cpu_ms = np.asarray(cpu) * 1e3
    n = args.frames
    out = {
        "model": args.model,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "frame_size": [args.height, args.width],
        "input_size": args.input_size,
        "window": s.window,
        "frames": n,
        "median_ms_frames_51_100": float(np.median(ms[50:100])),
        f"median_ms_frames_{n - 49}_{n}": float(np.median(ms[n - 50:])),
        "mean_ms_first_100": float(ms[:100].mean()),
        f"mean_ms_all_{n}": float(ms.mean()),
        "first_frame_ms": float(ms[0]),
        "cpu_median_ms_frames_51_100": float(np.median(cpu_ms[50:100])),
        f"cpu_median_ms_frames_{n - 49}_{n}": float(np.median(cpu_ms[n - 50:])),
        "rss_mb_after_100": rss.get(100),
        f"rss_mb_after_{n}": rss.get(n),
        "cache_bytes_after_100": state.get(100),
        f"cache_bytes_after_{n}": state.get(n),
    }
    out["latency_ratio_median"] = out[f"median_ms_frames_{n - 49}_{n}"] / out["median_ms_frames_51_100"]
    out["cpu_time_ratio_median"] = out[f"cpu_median_ms_frames_{n - 49}_{n}"] / out["cpu_median_ms_frames_51_100"]
    out["latency_ratio_mean"] = out[f"mean_ms_all_{n}"] / out["mean_ms_first_100"]
    if rss.get(100) and rss.get(n):
        out["rss_ratio"] = rss[n] / rss[100]
    return out


def _score(model: Any, sequences: list[dict], mode: str, input_size: int, window: tuple[int, int, int],
           max_depth: float, online_window: int | None) -> dict[str, float]:
    import torch

    import gemdepth
    from gemdepth.metrics import build_metrics

    metrics = build_metrics(list(METRICS), max_depth=max_depth)
    for seq in sequences:
        frames = list(seq["rgb"])
        if mode == "offline":
            w, ov, it = window
            results = list(gemdepth.infer_video(model, frames, input_size=input_size, window=w, overlap=ov,
                                                interp=it, device="cpu"))
        else:
            s = gemdepth.stream(model, input_size=input_size, window=online_window, device="cpu",
                                align=mode == "online")
            results = list(s.run(frames))
        pred = torch.from_numpy(np.stack([r.depth for r in results])).float()
        depth = torch.from_numpy(seq["depth"]).float()
        valid = depth > 0
        if seq.get("sky") is not None:
            valid &= ~torch.from_numpy(seq["sky"])
        metrics.update(pred, depth, valid, torch.from_numpy(seq["intrinsics"]).float(),
                       torch.from_numpy(seq["extrinsics"]).float(), name=seq["meta"]["sequence"])
    return {k: float(v) for k, v in metrics.compute().items()}


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """AbsRel / δ1 / TAE of offline vs online for the same weights."""
    import torch

    from gemdepth.data import read_sequences
    from gemdepth.demo import DemoSettings
    from gemdepth.weights import load_model

    demo = DemoSettings()
    ckpt = args.ckpt or (args.demo / "stage2" / "checkpoints" / "last.ckpt")
    shards = args.shards or (args.demo / "shards" / "synthetic_val")
    model = load_model(ckpt).eval()
    out: dict[str, Any] = {"checkpoint": str(ckpt), "threads": torch.get_num_threads(), "sets": {}}
    sets: dict[str, tuple[list[dict], int, tuple[int, int, int], float]] = {}
    synthetic = list(read_sequences(shards))
    sets["synthetic held-out"] = (synthetic, min(demo.size), demo.window, demo.max_eval_depth)
    if args.tum is not None and Path(args.tum).is_dir():
        from gemdepth.data.converters import CONVERTERS

        tum = list(CONVERTERS["tum"].iter_clips(Path(args.tum), 32, 1))[:1]
        sets["TUM fr1_xyz (32 frames)"] = (tum, args.tum_input_size, demo.window, 10.0)
    elif args.tum is not None:
        out["tum_skipped"] = f"{args.tum} is absent"
    for name, (seqs, size, window, cap) in sets.items():
        rows = {}
        for mode in ("offline", "online", "online_raw"):
            t0 = time.perf_counter()
            rows[mode] = _score(model, seqs, mode, size, window, cap, args.online_window)
            rows[mode]["seconds"] = round(time.perf_counter() - t0, 2)
        out["sets"][name] = {
            "sequences": len(seqs),
            "frames": int(sum(len(q["rgb"]) for q in seqs)),
            "input_size": size,
            "offline_window": list(window),
            "online_window": args.online_window or getattr(model, "max_frames", None),
            "rows": rows,
            "online_vs_offline_relative": {
                k: rows["online"][k] / rows["offline"][k] - 1 for k in METRICS if rows["offline"][k]
            },
        }
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="per-frame latency and RSS over a long stream")
    lat.add_argument("--model", default="gemdepth-vda-vits", help="model preset (random weights)")
    lat.add_argument("--frames", type=int, default=1000)
    lat.add_argument("--height", type=int, default=112)
    lat.add_argument("--width", type=int, default=112)
    lat.add_argument("--input-size", type=int, default=112)
    lat.add_argument("--window", type=int, default=None, help="online window (default: the model's)")
    lat.add_argument("--device", default="cpu")
    lat.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    acc = sub.add_parser("accuracy", help="online vs offline AbsRel / δ1 / TAE, same weights")
    acc.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="a `gemdepth demo --out` folder")
    acc.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: the demo's stage 2)")
    acc.add_argument("--shards", type=Path, default=None, help="held-out shards (default: the demo's synthetic_val)")
    acc.add_argument("--tum", type=Path, default=None, help="TUM RGB-D sequence folder (skipped when absent)")
    acc.add_argument("--tum-input-size", type=int, default=112)
    acc.add_argument("--online-window", type=int, default=None)
    for sp in (lat, acc):
        sp.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        sp.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = latency(args) if args.what == "latency" else accuracy(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        from gemdepth.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
