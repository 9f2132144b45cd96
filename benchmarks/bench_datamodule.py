"""DataModule throughput: frames/s per worker for 32-frame clips cropped to 518x518 from
720p-like sources.

    .venv/bin/python benchmarks/bench_datamodule.py            # renders a small 720p shard first
    .venv/bin/python benchmarks/bench_datamodule.py --shards shards/synthetic_720p --clips 8

"Per worker" is measured in one process (``num_workers=0``: the same code a DataLoader worker
runs: read tar, decode JPEG/PNG of the sampled frames, uint8 crop + resize, flip, normalise,
collate). ``--workers N`` also times a real DataLoader with N worker processes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.synthetic import make_synthetic_corpus


def _throughput(path: Path, clips: int, clip_length: int, size: int,
                workers: int) -> tuple[float, float]:
    """(frames per wall-second, frames per CPU-second of this process)."""
    dm = VideoDataModule(train_sources={"src": str(path)}, batch_size=1, clip_length=clip_length,
                         stride_range=(1, 1), short_side=size, sizes=[(size, size)],
                         num_workers=workers, samples_per_epoch=clips + 1, seed=0)
    it = iter(dm.train_dataloader())
    next(it)  # warm-up: worker start, first shard open
    start, cpu = time.perf_counter(), time.process_time()
    frames = sum(b["video"].shape[0] * b["video"].shape[1] for b in it)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return frames / wall, frames / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None, help="existing 720p-like corpus")
    parser.add_argument("--clips", type=int, default=6, help="clips to time")
    parser.add_argument("--clip-length", type=int, default=32)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--workers", type=int, default=0, help="also time N DataLoader workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.shards
        if path is None:
            path = Path(tmp) / "synthetic_720p"
            start = time.perf_counter()
            make_synthetic_corpus(path, sequences=2, frames=args.clip_length,
                                  clip_length=args.clip_length, size=(720, 1280), seed=0,
                                  workers=2, clips_per_shard=1, progress=False)
            print(f"rendered 2 clips of {args.clip_length} frames at 720x1280 in "
                  f"{time.perf_counter() - start:.1f} s")
        torch.set_num_threads(1)  # as in a DataLoader worker
        fps, cpu_fps = _throughput(path, args.clips, args.clip_length, args.size, 0)
        print(f"per worker: {fps:.1f} frames/s wall, {cpu_fps:.1f} frames per CPU-second "
              f"({args.clip_length}-frame clips, 720p -> {args.size}x{args.size})")
        if args.workers:
            fps, _ = _throughput(path, args.clips * args.workers, args.clip_length, args.size,
                                 args.workers)
            print(f"DataLoader with {args.workers} workers: {fps:.1f} frames/s in total")


if __name__ == "__main__":
    main()
