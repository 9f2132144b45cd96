"""DataModule throughput: frames/s per worker for 32-frame clips cropped to 518x518 from
720p-like sources, against *today's* loader (the code issue 13 measured, commit ``7de07a8``)
in the same run.

    .venv/bin/python benchmarks/bench_datamodule.py                 # renders small 720p corpora
    .venv/bin/python benchmarks/bench_datamodule.py --shards DIR --clips 8 --repeats 5
    .venv/bin/python benchmarks/bench_datamodule.py --workers 1 2 4 --profile
    .venv/bin/python benchmarks/bench_datamodule.py --loaders fast+uint8 fast+uint8+zlib16
    .venv/bin/python benchmarks/bench_datamodule.py --baseline none   # no git history needed

What runs against what:

* **today's code** (``--baseline REV``, default ``7de07a8``): that commit's ``gemdepth`` package,
  taken from this clone's git history (``git archive``) and imported in child processes. Its
  ``reference`` loader (PIL decoding: the 51-54 frames/s of the issue) and ``fast+uint8`` (what
  its stage configs ran) are timed on **today's shards** (rendered by that commit's writer) and on
  the **new shards** (rendered by this tree's writer: same scenes, same values; depth PNGs with
  "Up"-filtered rows and masks without filters, which this loader decodes without libpng);
* **this tree's** loaders (``VideoDataModule`` options) on the new shards:

  - ``reference``: ``fast_decode=False`` (PIL decoders; shares the rest of today's clip code);
  - ``fast``: ``fast_decode=True`` (default): torchvision's JPEG decoder, gemdepth's own
    PNG fast paths, float32 normalised video built frame by frame;
  - ``fast+uint8``: also ``normalize="device"`` (the stage configs' setting): uint8 video leaves
    the worker and is normalised on the GPU by ``on_after_batch_transfer`` (same values);
  - ``fast+uint8+2threads``: also ``decode_threads=2`` (a worker uses up to two cores);
  - ``fast+uint8+raw16`` / ``fast+uint8+zlib16``: on a copy of the corpus whose depth is stored
    uncompressed (``raw16``) or deflated (``zlib16``) (:func:`gemdepth.data.shards.recode_depth`,
    run once, untimed): the same batches, bit for bit.

Every timed run is its own child process (so two versions of ``gemdepth`` never meet), with one
thread as in a DataLoader worker, interleaved over ``--repeats`` so a load change hits every
loader alike. "Per worker" is measured in that process (``num_workers=0``: the code a worker runs:
read tar, decode the sampled frames, uint8 crop + resize, flip, collate). Frames per CPU-second
are the figure to compare on a shared machine; wall-clock frames/s are printed beside them.
``--workers N ...`` times real DataLoaders with N worker processes of this tree's code;
``--profile`` splits one in-process run of each of this tree's loaders into stages.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
#: The commit issue 13 measured ("today's loader", 51-54 frames/s per worker).
BASELINE = "7de07a8"

LOADERS: dict[str, dict[str, Any]] = {
    "reference": {"fast_decode": False},
    "fast": {"fast_decode": True, "normalize": "worker"},
    "fast+uint8": {"fast_decode": True, "normalize": "device"},
    "fast+uint8+2threads": {"fast_decode": True, "normalize": "device", "decode_threads": 2},
    "fast+uint8+raw16": {"fast_decode": True, "normalize": "device", "depth_codec": "raw16"},
    "fast+uint8+zlib16": {"fast_decode": True, "normalize": "device", "depth_codec": "zlib16"},
}
DEFAULT_LOADERS = ["reference", "fast+uint8", "fast+uint8+raw16"]
BASELINE_LOADERS = ["reference", "fast+uint8"]


def _corpus(path: Path, codec: str, tmp: Path) -> Path:
    """``path`` itself for png16 (what every corpus holds by default), else a copy of it with
    depth re-encoded in ``codec`` (same pixels: RGB and masks byte for byte)."""
    from gemdepth.data.shards import recode_depth

    if codec == "png16":
        return path
    out = tmp / f"{path.name}-{codec}"
    if not out.exists():
        start = time.perf_counter()
        recode_depth(path, out, codec)
        print(f"re-encoded the depth of {path} as {codec} in {time.perf_counter() - start:.1f} s")
    return out


def _module(path: Path, clips: int, clip_length: int, size: int, workers: int,
            **options: Any) -> Any:
    """A VideoDataModule of whichever ``gemdepth`` is imported (options it lacks are dropped)."""
    from gemdepth.data.datamodule import VideoDataModule

    kwargs = dict(train_sources={"src": str(path)}, batch_size=1, clip_length=clip_length,
                  stride_range=(1, 1), short_side=size, sizes=[(size, size)],
                  num_workers=workers, samples_per_epoch=clips + max(1, workers), seed=0,
                  pin_memory=False, persistent_workers=False, **options)
    accepted = inspect.signature(VideoDataModule.__init__).parameters
    # one pass per loader, not persistent: its workers exit after it, so their CPU is counted
    return VideoDataModule(**{k: v for k, v in kwargs.items() if k in accepted})


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _throughput(dm: Any, warmup: int) -> tuple[float, float]:
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


def _measure_child(spec: dict[str, Any]) -> None:
    """Child process: time one loader once and print ``{"wall": .., "cpu": .., "code": ..}``."""
    import gemdepth

    import gemdepth.data.datamodule as datamodule

    torch.set_num_threads(1)  # as in a DataLoader worker
    if hasattr(datamodule, "reuse_clip_buffers"):
        datamodule.reuse_clip_buffers()  # what ClipStream does in a worker process
    dm = _module(Path(spec["corpus"]), workers=0, **spec["geometry"], **spec["options"])
    wall, cpu = _throughput(dm, warmup=1)
    print(json.dumps({"wall": wall, "cpu": cpu, "code": str(Path(gemdepth.__file__).parent)}))


def _in_child(code: Path | None, payload: dict[str, Any], expect: Path) -> dict[str, Any]:
    """Run ``--_measure payload`` in a child process importing ``gemdepth`` from ``code``
    (this tree when ``None``); check it really imported the package under ``expect``."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, __file__, "--_measure", json.dumps(payload)],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timing run failed ({payload['options']}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(out["code"]).resolve() != expect.resolve():
        raise RuntimeError(f"the timing run imported gemdepth from {out['code']}, not {expect}")
    return out


def _baseline_code(rev: str, into: Path) -> Path | None:
    """``gemdepth`` of commit ``rev`` extracted from this clone's history into ``into``."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev,
                                  "gemdepth"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        print(f"no baseline: cannot read commit {rev} from {REPO}'s git history "
              f"({err.decode(errors='replace').strip() or exc}); pass --baseline none, or run "
              "this from a full clone (git fetch --unshallow)")
        return None
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _render(code: Path | None, out: Path, sequences: int, clip_length: int) -> None:
    """A 720x1280 synthetic corpus written by ``code``'s shard writer (this tree's if None)."""
    call = ("from gemdepth.data.synthetic import make_synthetic_corpus as m; "
            f"m({str(out)!r}, sequences={sequences}, frames={clip_length}, "
            f"clip_length={clip_length}, size=(720, 1280), seed=0, workers=2, "
            "clips_per_shard=1, progress=False)")
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    subprocess.run([sys.executable, "-c", call], env=env, check=True)


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


def profile(dm: Any, warmup: int) -> tuple[Counter[str], float, int]:
    """Stage -> exclusive CPU seconds of one in-process run, total CPU seconds, frames."""
    import PIL.Image
    import PIL.ImageFile
    import torch.nn.functional as F

    import gemdepth.data.codecs as codecs
    import gemdepth.data.datamodule as datamodule
    import gemdepth.data.shards as shards

    timer = StageTimer()
    patches = [
        (datamodule, "iter_raw_samples",
         timer.wrap_generator(datamodule.iter_raw_samples, "read tar (+ sha256 once)")),
        (PIL.ImageFile.ImageFile, "load", timer.wrap(PIL.ImageFile.ImageFile.load, _pil_stage)),
        (PIL.Image.Image, "tobytes", timer.wrap(PIL.Image.Image.tobytes, "PIL -> numpy copy")),
        (codecs, "decode_jpeg", timer.wrap(codecs.decode_jpeg, "JPEG decode")),
        (F, "interpolate", timer.wrap(F.interpolate, "RGB resize (uint8, antialiased)")),
        (datamodule, "decode_crop_rgb", timer.wrap(datamodule.decode_crop_rgb, "RGB crop + stack")),
        (shards, "png16_rows", timer.wrap(shards.png16_rows,
                                          "depth PNG decode (inflate, undo Up rows)")),
        (datamodule, "png_mask", timer.wrap(datamodule.png_mask, "mask PNG decode")),
        (datamodule, "_finite_non_negative", timer.wrap(datamodule._finite_non_negative,
                                                        "depth checks (finite, >= 0)")),
        (datamodule, "_float16_bits_to_float32", timer.wrap(
            datamodule._float16_bits_to_float32, "depth float16 -> float32")),
        (datamodule, "crop_nearest", timer.wrap(datamodule.crop_nearest, "depth/mask crop")),
        (datamodule, "decode_depth_bits", timer.wrap(
            datamodule.decode_depth_bits, "depth decode (PNG header check; raw16/zlib16 view; other PNGs: PIL)")),
        (datamodule.ClipStream, "_collate",
         timer.wrap(datamodule.ClipStream._collate, "collate (stack, to float, normalise)")),
        (datamodule.ClipStream, "process", timer.wrap(
            datamodule.ClipStream.process,
            "rest of a clip (header, supervision mask, intrinsics, flip)")),
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


def _report(runs: dict[str, list[dict[str, float]]]) -> dict[str, tuple[float, float]]:
    print("\nper worker (one process, num_workers=0): frames/s wall | frames per CPU-second")
    print(f"{'loader @ shards':58s} {'best':>7s} {'median':>7s} | {'best':>7s} {'median':>7s}")
    summary = {}
    for name, res in runs.items():
        wall, cpu = [r["wall"] for r in res], [r["cpu"] for r in res]
        summary[name] = (max(cpu), statistics.median(cpu))
        print(f"{name:58s} {max(wall):7.1f} {statistics.median(wall):7.1f} | "
              f"{max(cpu):7.1f} {statistics.median(cpu):7.1f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=None,
                        help="an existing 720p-like corpus for this tree's loaders (and today's, "
                             "which then read it too; no corpus of today's writer is made)")
    parser.add_argument("--clips", type=int, default=4, help="clips to time per run")
    parser.add_argument("--clip-length", type=int, default=32)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="runs per loader (best, median)")
    parser.add_argument("--loaders", nargs="+", default=DEFAULT_LOADERS, choices=list(LOADERS))
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"commit of today's loader and writer (default {BASELINE}, the one "
                             "issue 13 measured); 'none' to skip")
    parser.add_argument("--baseline-loaders", nargs="*", default=BASELINE_LOADERS,
                        choices=["reference", "fast", "fast+uint8"])
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="also time DataLoaders with these numbers of worker processes")
    parser.add_argument("--profile", action="store_true", help="CPU time per stage")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        _measure_child(json.loads(args._measure))
        return
    geometry = dict(clips=args.clips, clip_length=args.clip_length, size=args.size)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sequences = max([2, *args.workers])  # a clip (shard) per worker at least
        base = None
        if args.baseline != "none":
            base = _baseline_code(args.baseline, tmp / f"gemdepth-{args.baseline}")
        corpora: dict[str, Path] = {}
        start = time.perf_counter()
        if args.shards is not None:  # labelled "new" below: the corpus every loader reads
            corpora["new"] = args.shards
            print(f"every loader reads {args.shards} (\"new shards\" below)")
        else:
            corpora["new"] = tmp / "synthetic_720p"
            _render(None, corpora["new"], sequences, args.clip_length)
            if base is not None:
                corpora["today"] = tmp / "synthetic_720p_today"
                _render(base, corpora["today"], sequences, args.clip_length)
            print(f"rendered {sequences} clips of {args.clip_length} frames at 720x1280 "
                  f"({', '.join(corpora)} shards) in {time.perf_counter() - start:.1f} s")
        here = Path(__file__).resolve().parents[1] / "gemdepth"
        plan: list[tuple[str, Path | None, Path, dict[str, Any]]] = []
        if base is not None:
            for name in args.baseline_loaders:
                for which, path in corpora.items():
                    plan.append((f"today ({args.baseline}) {name} @ {which} shards", base, path,
                                 LOADERS[name]))
        for name in args.loaders:
            opts = dict(LOADERS[name])
            path = _corpus(corpora["new"], opts.pop("depth_codec", "png16"), tmp)
            plan.append((f"{name} @ new shards" + ("" if path == corpora["new"] else
                                                   f" ({LOADERS[name]['depth_codec']} copy)"),
                         None, path, opts))
        print(f"{args.clip_length}-frame clips, 720p -> {args.size}x{args.size}; {_load()}")
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in plan}
        for _ in range(args.repeats):  # interleaved, so a load change hits every loader alike
            for label, code, path, opts in plan:
                payload = {"corpus": str(path), "geometry": geometry, "options": opts}
                expect = (code / "gemdepth") if code is not None else here
                runs[label].append(_in_child(code, payload, expect))
        summary = _report(runs)
        baselines = [label for label, code, *_ in plan if code is not None]
        for label, code, *_ in plan:
            if code is not None:
                continue
            for ref in baselines:
                best, med = summary[label][0] / summary[ref][0], summary[label][1] / summary[ref][1]
                print(f"{label} / {ref}: {best:.2f}x (best), {med:.2f}x (median), per CPU-second")
        if base is None:
            print("no baseline in this run: this tree's 'reference' row (PIL decoding) shares the "
                  "clip code's later speed-ups, so it is faster than the loader issue 13 measured; "
                  f"run from a clone with history (commit {BASELINE}) for that comparison")
        sys.path.insert(0, str(here.parent))
        for n in args.workers:
            torch.set_num_threads(1)
            print(f"\nDataLoader with {n} worker process(es), this tree's code on the new shards: "
                  "total frames/s wall, per worker, frames per CPU-second (workers included)")
            for name in args.loaders:
                opts = dict(LOADERS[name])
                path = _corpus(corpora["new"], opts.pop("depth_codec", "png16"), tmp)
                wall, cpu = _throughput(_module(path, workers=n, **{**geometry,
                                                                   "clips": args.clips * n},
                                                **opts), warmup=n)
                print(f"  {name:20s} {wall:7.1f} total  {wall / n:7.1f} per worker  "
                      f"{cpu:7.1f} per CPU-s")
        if args.profile:
            from gemdepth.data.datamodule import reuse_clip_buffers

            torch.set_num_threads(1)
            reuse_clip_buffers()
            for name in args.loaders:
                opts = dict(LOADERS[name])
                if opts.get("decode_threads", 1) > 1:
                    print(f"\n(no profile of {name}: CPU time is per process, not per thread)")
                    continue
                path = _corpus(corpora["new"], opts.pop("depth_codec", "png16"), tmp)
                stages, cpu, frames = profile(_module(path, workers=0, **geometry, **opts),
                                              warmup=1)
                print(f"\nprofile of {name}: {cpu / frames * 1e3:.2f} ms CPU per frame "
                      f"({frames} frames)")
                for stage, sec in stages.most_common():
                    print(f"  {stage:62s} {sec / frames * 1e3:6.2f} ms  {100 * sec / cpu:5.1f} %")
        print(f"\n{_load()}")


if __name__ == "__main__":
    main()
