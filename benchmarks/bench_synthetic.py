"""Frames per second of the synthetic renderer (render only, and render + encode + write).

    .venv/bin/python benchmarks/bench_synthetic.py --size 168x224 --sequences 8 --frames 32

Reports render-only throughput with 1 and ``--workers`` processes and the end-to-end rate of
``make_synthetic_corpus`` (JPEG/PNG encoding and tar writing included).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from gemdepth.data.synthetic import iter_synthetic_clips, make_synthetic_corpus


def _rate(fn) -> tuple[float, int]:
    start = time.perf_counter()
    frames = fn()
    return frames / (time.perf_counter() - start), frames


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the rendering pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cpu_rate(fn) -> float:
    """Frames per CPU-second (robust to other load on a shared machine: N free cores give
    about N times this when the work runs in N processes)."""
    start = _cpu_seconds()
    frames = fn()
    return frames / (_cpu_seconds() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="168x224")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    def render(workers: int) -> int:
        clips = iter_synthetic_clips(args.sequences, args.frames, args.frames, (h, w), args.seed,
                                     workers=workers)
        return sum(c["rgb"].shape[0] for c in clips)

    list(iter_synthetic_clips(1, 2, 2, (h, w), seed=999))  # warm-up (imports, caches)
    print(f"render only, per CPU-second of one core: {_cpu_rate(lambda: render(1)):7.1f} frames/s")
    for workers in sorted({1, args.workers}):
        fps, n = _rate(lambda: render(workers))
        print(f"render only, {workers} process(es): {fps:7.1f} frames/s ({n} frames {h}x{w})")
    with tempfile.TemporaryDirectory() as tmp:
        def write() -> int:
            return make_synthetic_corpus(tmp, args.sequences, args.frames, args.frames, (h, w),
                                         args.seed, workers=args.workers, progress=False)["frames"]

        fps, n = _rate(write)
        cpu = _cpu_rate(write)
    print(f"render + encode + write shards, {args.workers} process(es): {fps:7.1f} frames/s "
          f"wall; {cpu:.1f} frames per CPU-second (x{args.workers} free cores: "
          f"~{cpu * args.workers:.0f} frames/s)")


if __name__ == "__main__":
    main()
