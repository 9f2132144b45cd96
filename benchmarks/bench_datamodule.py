"""DataModule throughput: frames/s per worker for 32-frame clips cropped to 518x518 from
720p-like sources, today's (reference) loader against the fast one in the same run.

    .venv/bin/python benchmarks/bench_datamodule.py                 # renders a small 720p corpus
    .venv/bin/python benchmarks/bench_datamodule.py --shards DIR --clips 8 --repeats 5
    .venv/bin/python benchmarks/bench_datamodule.py --workers 1 2 4 --profile
    .venv/bin/python benchmarks/bench_datamodule.py --loaders reference fast+uint8+zlib16

Loaders compared (``VideoDataModule`` options):

* ``reference``: ``fast_decode=False``: PIL decoding, ``np.asarray`` copies, stack/float/
  normalise in three passes (the loader as it was);
* ``fast``: ``fast_decode=True`` (default): torchvision decoders straight into tensors, same
  pixels; float32 normalised video built frame by frame (same batch values);
* ``fast+uint8``: also ``normalize="device"``: uint8 video leaves the worker and is normalised
  on the GPU by ``on_after_batch_transfer`` (same values reach the model);
* ``fast+uint8+2threads``: also ``decode_threads=2``: a worker decodes a clip's frames on two
  threads, so it uses up to two cores (compare frames per CPU-second for the cost per core);
* ``fast+uint8+raw16`` / ``fast+uint8+zlib16``: ``fast+uint8`` on a copy of the corpus whose
  depth is stored uncompressed (``raw16``) or deflated (``zlib16``) instead of in 16-bit PNGs
  (``gemdepth data synth/convert --depth-codec``, or :func:`gemdepth.data.shards.recode_depth`,
  which the benchmark runs once, untimed): the same batches, bit for bit (tested). PNG decoding
  is the floor of the PNG corpus (~40 % of the fast loader's CPU); raw16 removes it (a view of
  the bytes, cropped before any pixel is read) at ~8x the depth bytes, zlib16 cuts it ~3x at
  about a PNG's size.

Default loaders: reference, fast, fast+uint8, fast+uint8+raw16. The ratio that counts is
``fast+uint8+raw16 / reference`` per CPU-second (wall-clock ratios on a loaded machine swing
with the load; the runs are interleaved so each loader sees the same mix).

"Per worker" is measured in one process (``num_workers=0``: the code a DataLoader worker runs:
read tar, decode the sampled frames' JPEG/PNG, uint8 crop + resize, flip, collate). Wall-clock
frames/s depend on what else runs on the machine, so frames per CPU-second of the process are
printed as well, and the load average at the start and end. ``--repeats`` runs each loader
several times (interleaved) and reports the best and the median. ``--workers N ...`` times real
DataLoaders with N worker processes (total and per worker, CPU time of the workers included).
``--profile`` splits one run of each loader into stages (exclusive CPU time).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.shards import recode_depth
from gemdepth.data.synthetic import make_synthetic_corpus

LOADERS: dict[str, dict[str, Any]] = {
    "reference": {"fast_decode": False},
    "fast": {"fast_decode": True, "normalize": "worker"},
    "fast+uint8": {"fast_decode": True, "normalize": "device"},
    "fast+uint8+2threads": {"fast_decode": True, "normalize": "device", "decode_threads": 2},
    "fast+uint8+raw16": {"fast_decode": True, "normalize": "device", "depth_codec": "raw16"},
    "fast+uint8+zlib16": {"fast_decode": True, "normalize": "device", "depth_codec": "zlib16"},
}
DEFAULT_LOADERS = ["reference", "fast", "fast+uint8", "fast+uint8+raw16"]


def _corpus(path: Path, codec: str, tmp: Path) -> Path:
    """``path`` itself for png16 (what every corpus holds by default), else a copy of it with
    depth re-encoded in ``codec`` (same pixels: RGB and masks byte for byte)."""
    if codec == "png16":
        return path
    out = tmp / f"{path.name}-{codec}"
    if not out.exists():
        start = time.perf_counter()
        recode_depth(path, out, codec)
        print(f"re-encoded the depth of {path} as {codec} in {time.perf_counter() - start:.1f} s")
    return out


def _module(path: Path, clips: int, clip_length: int, size: int, workers: int,
            depth_codec: str = "png16", tmp: Path = Path("."), **options: Any) -> VideoDataModule:
    path = _corpus(path, depth_codec, tmp)
    # one pass per loader, not persistent: its workers exit after it, so their CPU is counted
    return VideoDataModule(train_sources={"src": str(path)}, batch_size=1, clip_length=clip_length,
                           stride_range=(1, 1), short_side=size, sizes=[(size, size)],
                           num_workers=workers, samples_per_epoch=clips + max(1, workers),
                           seed=0, pin_memory=False, persistent_workers=False, **options)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _throughput(dm: VideoDataModule, warmup: int) -> tuple[float, float]:
    """(frames per wall-second, frames per CPU-second of this process and its workers)."""
    it = iter(dm.train_dataloader())
    for _ in range(warmup):  # worker start, first shard open and checksum
        next(it)
    start, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
    frames = sum(b["video"].shape[0] * b["video"].shape[1] for b in it)
    wall = time.perf_counter() - start
    del it  # workers exit here; their CPU time is then in RUSAGE_CHILDREN
    cpu = time.process_time() - cpu + _children_cpu() - child
    return frames / wall, frames / cpu


class StageTimer:
    """Exclusive CPU time per stage of wrapped functions (nested calls are subtracted)."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._children: list[float] = []

    def _timed(self, stage: str, call: Callable[[], Any]) -> Any:
        self._children.append(0.0)
        t0 = time.process_time()
        try:
            return call()
        finally:
            spent = time.process_time() - t0
            self.total[stage] += spent - self._children.pop()
            if self._children:
                self._children[-1] += spent

    def wrap(self, fn: Callable, stage: str | Callable[..., str]) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Any:
            name = stage(*args, **kwargs) if callable(stage) else stage
            return self._timed(name, lambda: fn(*args, **kwargs))
        return inner

    def wrap_generator(self, fn: Callable, stage: str) -> Callable:
        def inner(*args: Any, **kwargs: Any) -> Iterator:
            it = self._timed(stage, lambda: fn(*args, **kwargs))
            while True:
                try:
                    item = self._timed(stage, lambda: next(it))
                except StopIteration:
                    return
                yield item
        return inner


def _pil_stage(img: Any, *_: Any) -> str:
    if img.format == "JPEG":
        return "JPEG decode"
    return "depth PNG decode" if img.mode.startswith("I") else "mask PNG decode"


def _png_stage(data: torch.Tensor, *_: Any) -> str:
    return "depth PNG decode" if int(data[24]) == 16 else "mask PNG decode"


def profile(dm: VideoDataModule, warmup: int) -> tuple[Counter[str], float, int]:
    """Stage -> exclusive CPU seconds of one in-process run, total CPU seconds, frames."""
    import PIL.Image
    import PIL.ImageFile
    import torch.nn.functional as F

    import gemdepth.data.codecs as codecs
    import gemdepth.data.datamodule as datamodule

    timer = StageTimer()
    patches = [
        (datamodule, "iter_raw_samples",
         timer.wrap_generator(datamodule.iter_raw_samples, "read tar (+ sha256 once)")),
        (PIL.ImageFile.ImageFile, "load", timer.wrap(PIL.ImageFile.ImageFile.load, _pil_stage)),
        (PIL.Image.Image, "tobytes", timer.wrap(PIL.Image.Image.tobytes, "PIL -> numpy copy")),
        (codecs, "decode_jpeg", timer.wrap(codecs.decode_jpeg, "JPEG decode")),
        (codecs, "decode_png", timer.wrap(codecs.decode_png, _png_stage)),
        (F, "interpolate", timer.wrap(F.interpolate, "RGB resize (uint8, antialiased)")),
        (datamodule, "decode_crop_rgb", timer.wrap(datamodule.decode_crop_rgb, "RGB crop + stack")),
        (datamodule, "crop_nearest", timer.wrap(datamodule.crop_nearest, "depth/mask crop")),
        (datamodule, "decode_depth_bits", timer.wrap(
            datamodule.decode_depth_bits, "depth decode (raw16/zlib16 view; PNG header check)")),
        (datamodule.ClipStream, "_collate",
         timer.wrap(datamodule.ClipStream._collate, "collate (stack, to float, normalise)")),
        (datamodule.ClipStream, "process", timer.wrap(
            datamodule.ClipStream.process,
            "rest of a clip (header, depth checks, sky/valid, flip, to tensor)")),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    it = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(it)
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        cpu = time.process_time()
        frames = sum(b["video"].shape[0] * b["video"].shape[1] for b in it)
        cpu = time.process_time() - cpu
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    timer.total["loop, sampling and the rest"] = cpu - sum(timer.total.values())
    return timer.total, cpu, frames


def _load() -> str:
    return "load average %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count() or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None, help="existing 720p-like corpus")
    parser.add_argument("--clips", type=int, default=4, help="clips to time per run")
    parser.add_argument("--clip-length", type=int, default=32)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="runs per loader (best, median)")
    parser.add_argument("--loaders", nargs="+", default=DEFAULT_LOADERS, choices=list(LOADERS))
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="also time DataLoaders with these numbers of worker processes")
    parser.add_argument("--profile", action="store_true", help="CPU time per stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.shards
        if path is None:
            path = Path(tmp) / "synthetic_720p"
            start = time.perf_counter()
            sequences = max([2, *args.workers])  # a clip (shard) per worker at least
            make_synthetic_corpus(path, sequences=sequences, frames=args.clip_length,
                                  clip_length=args.clip_length, size=(720, 1280), seed=0,
                                  workers=2, clips_per_shard=1, progress=False)
            print(f"rendered {sequences} clips of {args.clip_length} frames at 720x1280 in "
                  f"{time.perf_counter() - start:.1f} s")
        torch.set_num_threads(1)  # as in a DataLoader worker
        geometry = dict(clips=args.clips, clip_length=args.clip_length, size=args.size,
                        tmp=Path(tmp))
        print(f"{args.clip_length}-frame clips, 720p -> {args.size}x{args.size}; {_load()}")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in args.loaders}
        for _ in range(args.repeats):  # interleaved, so a load change hits every loader alike
            for name in args.loaders:
                runs[name].append(_throughput(_module(path, workers=0, **geometry,
                                                      **LOADERS[name]), warmup=1))
        print("\nper worker (in-process, num_workers=0): frames/s wall | frames per CPU-second")
        print(f"{'loader':20s} {'best':>7s} {'median':>7s} | {'best':>7s} {'median':>7s}")
        best = {}
        for name, res in runs.items():
            wall, cpu = [r[0] for r in res], [r[1] for r in res]
            best[name] = (max(wall), max(cpu))
            print(f"{name:20s} {max(wall):7.1f} {statistics.median(wall):7.1f} | "
                  f"{max(cpu):7.1f} {statistics.median(cpu):7.1f}")
        if "reference" in best:
            for name in best:
                if name != "reference":
                    print(f"{name} / reference: {best[name][0] / best['reference'][0]:.2f}x wall, "
                          f"{best[name][1] / best['reference'][1]:.2f}x per CPU-second")
        for n in args.workers:
            print(f"\nDataLoader with {n} worker process(es): total frames/s wall, per worker, "
                  "frames per CPU-second (workers included)")
            for name in args.loaders:
                dm = _module(path, workers=n, **{**geometry, "clips": args.clips * n},
                             **LOADERS[name])
                wall, cpu = _throughput(dm, warmup=n)
                print(f"  {name:20s} {wall:7.1f} total  {wall / n:7.1f} per worker  "
                      f"{cpu:7.1f} per CPU-s")
        if args.profile:
            for name in args.loaders:
                if LOADERS[name].get("decode_threads", 1) > 1:
                    print(f"\n(no profile of {name}: CPU time is per process, not per thread)")
                    continue
                stages, cpu, frames = profile(_module(path, workers=0, **geometry,
                                                      **LOADERS[name]), warmup=1)
                print(f"\nprofile of {name}: {cpu / frames * 1e3:.2f} ms CPU per frame "
                      f"({frames} frames)")
                for stage, sec in stages.most_common():
                    print(f"  {stage:62s} {sec / frames * 1e3:6.2f} ms  {100 * sec / cpu:5.1f} %")
        print(f"\n{_load()}")


if __name__ == "__main__":
    main()
