"""Frames/s and peak host memory of ``gemdepth infer`` for model presets with random weights.

Each run builds the preset with random weights, saves it as a gemdepth checkpoint, encodes a
procedural clip as an mp4 and runs ``python -m gemdepth infer`` on it in a fresh process, then
reads ``run.json`` (frames/s of the whole pipeline, process peak RSS). Several ``--frames``
values at one size show whether peak memory stays flat with video length.

    python benchmarks/bench_inference.py --preset gemdepth-vda-vits --frames 24 48 --size 480x640
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, frames: int, height: int, width: int, fps: int = 30) -> Path:
    """A smooth moving pattern, encoded with libx264 (or mpeg4)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            img = 0.5 + 0.4 * np.sin(np.stack([9 * xx + 0.2 * t, 7 * yy - 0.15 * t, 5 * (xx + yy) + 0.1 * t], -1))
            frame = av.VideoFrame.from_ndarray((img * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["gemdepth-vda-vits"])
    p.add_argument("--frames", nargs="+", type=int, default=[24])
    p.add_argument("--size", default="480x640", help="clip size HxW")
    p.add_argument("--input-size", type=int, default=518)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the infer process (OMP_NUM_THREADS)")
    p.add_argument("--json", type=Path, default=None, help="append the results here as JSON lines")
    p.add_argument("--compile", action="store_true", help="gemdepth infer --compile (torch.compile, inductor)")
    p.add_argument("--max-memory", default=None, help="gemdepth infer --max-memory (e.g. 512MB, none)")
    p.add_argument(
        "--no-encoder-cache", action="store_true", help="re-encode the carried key frames in every window (the before)"
    )
    args = p.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))

    import os

    import torch

    from gemdepth.models import build_model
    from gemdepth.weights.convert import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for preset in args.preset:
            torch.manual_seed(0)
            ckpt = tmp / f"{preset}.safetensors"
            save_checkpoint(build_model(preset).eval(), preset, ckpt)
            for frames in args.frames:
                clip = make_clip(tmp / f"clip{frames}.mp4", frames, height, width)
                out = tmp / f"out-{preset}-{frames}"
                env = dict(os.environ)
                if args.threads:
                    env["OMP_NUM_THREADS"] = str(args.threads)
                cmd = [
                    sys.executable,
                    "-m",
                    "gemdepth",
                    "infer",
                    str(clip),
                    "--ckpt",
                    str(ckpt),
                    "--out",
                    str(out),
                    "--input-size",
                    str(args.input_size),
                    "--device",
                    args.device,
                    "--precision",
                    args.precision,
                    "--no-progress",
                ]
                cmd += ["--compile"] if args.compile else []
                cmd += ["--max-memory", args.max_memory] if args.max_memory else []
                cmd += ["--no-encoder-cache"] if args.no_encoder_cache else []
                start = time.perf_counter()
                subprocess.run(cmd, check=True, env=env)
                wall = time.perf_counter() - start
                run = json.loads((out / clip.stem / "run.json").read_text())
                row = {
                    "preset": preset,
                    "frames": frames,
                    "size": [height, width],
                    "network_input": run["network_input"],
                    "device": args.device,
                    "precision": args.precision,
                    "threads": args.threads or torch.get_num_threads(),
                    "frames_per_second": run["frames_per_second"],
                    "pipeline_seconds": run["seconds"],
                    "wall_seconds_with_startup": round(wall, 1),
                    "peak_rss_mb": run["process_peak_rss_mb"],
                    "compiled": run.get("compiled", False),
                    "max_memory_bytes": run.get("max_memory_bytes"),
                    "encoder_cache": run.get("encoder_cache"),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
