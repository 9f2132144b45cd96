"""Peak host memory (``ru_maxrss``) of one window forward, each measurement in a fresh process.

A window is one ``model(video)`` call on a ``(1, T, 3, H, W)`` clip under ``torch.inference_mode``,
CPU, float32, random weights (memory does not depend on the values). Every measurement runs in
its own Python process so that ``ru_maxrss`` (the process's high-water mark) belongs to that
forward alone; the weights-only RSS (after building the model, before the forward) is reported
beside it.

    python benchmarks/bench_window_memory.py --preset gemdepth-vda-vits --frames 32 --size 518x686
    python benchmarks/bench_window_memory.py --preset gemdepth-vda-vitl --frames 8 32 --max-memory 1GB
    python benchmarks/bench_window_memory.py --preset gemdepth-vda-vits --frames 8 --size 196x350 --train \
        --checkpointing encoder,plugins,head     # peak of one training step with activation checkpointing

``--max-memory`` is the model's activation budget (``VideoDepthModel.set_max_memory``); ``none``
runs every stage on the whole clip at once (the unchunked forward). ``--pythonpath`` runs the
child against another copy of the package (for before/after comparisons).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    if args.pythonpath:  # import the package from another checkout (the editable install wins over PYTHONPATH)
        import importlib.util

        root = os.path.join(args.pythonpath, "gemdepth")
        spec = importlib.util.spec_from_file_location("gemdepth", os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])
        assert spec is not None and spec.loader is not None
        sys.modules["gemdepth"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    from gemdepth.models import build_model

    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    model = build_model(args.preset[0]).eval()
    budget = None if args.max_memory in (None, "none", "default") else args.max_memory
    if hasattr(model, "set_max_memory") and args.max_memory != "default":
        model.set_max_memory(budget)
    if args.checkpointing:
        parts = [p for p in args.checkpointing.split(",") if p and p != "none"]
        model.set_checkpointing(**{p: True for p in parts})
    video = torch.randn(1, args.frames[0], 3, height, width)
    rss_weights = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if args.train:  # one training step's forward + backward (gradients of every parameter)
        model.train()
        out = model(video)
        loss = out.depth.square().mean() + sum(p.square().mean() for p in (out.pose_enc or []))
        loss.backward()
    else:
        with torch.inference_mode():
            out = model(video)
    seconds = time.perf_counter() - start
    runs = [seconds]
    for _ in range(args.repeat - 1):  # further timed forwards (the first one includes warm-up)
        with torch.inference_mode():
            start = time.perf_counter()
            model(video)
            runs.append(time.perf_counter() - start)
    if args.repeat > 1:
        seconds = sorted(runs[1:])[(len(runs) - 1) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": args.preset[0],
        "frames": args.frames[0],
        "size": [height, width],
        "max_memory": args.max_memory,
        "mode": "train-step" if args.train else "inference",
        "checkpointing": args.checkpointing or "none",
        "threads": args.threads,
        "rss_after_build_mb": round(rss_weights),
        "peak_rss_mb": round(peak),
        "forward_seconds": round(seconds, 2),
        "depth_mean": float(out.depth.detach().mean()),
        "package": os.path.dirname(sys.modules["gemdepth"].__file__ or ""),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["gemdepth-vda-vits"])
    p.add_argument("--frames", nargs="+", type=int, default=[32])
    p.add_argument("--size", default="518x686", help="network input HxW (multiples of 14)")
    p.add_argument("--max-memory", default="default",
                   help="activation budget, e.g. 512MB, 2GB, bytes, 'none' (unchunked) or 'default'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="forwards to time; >1 reports the median after the first")
    p.add_argument("--train", action="store_true", help="measure a training step (forward + backward) instead")
    p.add_argument("--checkpointing", default="", help="parts to checkpoint, e.g. encoder,plugins,head")
    p.add_argument("--pythonpath", default=None, help="import gemdepth from this folder in the child (another checkout)")
    p.add_argument("--json", default=None, help="append the results here as JSON lines")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for preset in args.preset:
        for frames in args.frames:
            cmd = [sys.executable, __file__, "--child", "--preset", preset, "--frames", str(frames),
                   "--size", args.size, "--max-memory", args.max_memory, "--threads", str(args.threads)]
            if args.pythonpath:
                cmd += ["--pythonpath", args.pythonpath]
            if args.train:
                cmd += ["--train"]
            if args.repeat > 1:
                cmd += ["--repeat", str(args.repeat)]
            if args.checkpointing:
                cmd += ["--checkpointing", args.checkpointing]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            line = res.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
