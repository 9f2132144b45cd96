"""``gemdepth bench``: forward-pass speed, memory and FLOPs per preset, resolution and clip length.

Weights are random (nothing is downloaded). FLOPs come from :func:`gemdepth.flops.measure_flops`
over one forward: :class:`torch.utils.flop_counter.FlopCounterMode` for matmuls and convolutions,
with formulas for every SDPA kernel and the attention share counted from the shapes of each
``scaled_dot_product_attention`` call, so the figure does not depend on the torch release or the
kernel it dispatched to; the attention share is reported separately so its inclusion is
visible. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the peak resident set
size sampled during the timed forwards on CPU (process-wide, so it includes the weights and
Python itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemdepth.flops import measure_flops
from gemdepth.models.cpu_linear import CPU_LINEAR_BACKENDS, resolved_cpu_linear_backend, set_cpu_linear_backend

DEFAULT_PRESETS = ["vda-vits", "gemdepth-vda-vits"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class BenchResult:
    """One benchmark row."""

    preset: str
    height: int
    width: int
    frames: int
    device: str
    dtype: str
    ms_per_clip: float
    frames_per_s: float
    peak_mem_mib: float
    params_m: float
    gflops_per_frame: float
    attn_gflops_per_frame: float
    compiled: bool = False
    compile_s: float | None = None  # first (compiling) call, excluded from ms_per_clip
    cpu_linear: str | None = None  # CPU fp32 rows: "onednn" or "native" linear layers


def parse_size(text: str) -> tuple[int, int]:
    """``"518x518"`` → ``(518, 518)`` (height × width, multiples of 14)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like HxW, e.g. 518x518") from None
    if h % 14 or w % 14 or h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be positive multiples of 14")
    return h, w


def count_flops(model: nn.Module, video: torch.Tensor, autocast: Any) -> tuple[int, int]:
    """``(total, attention)`` FLOPs of one forward; attention = the SDPA calls' share.

    Counted by :func:`gemdepth.flops.measure_flops`, right whichever SDPA kernel torch picks.

    Parameters are frozen while counting: FlopCounterMode's module tracker hooks autograd and
    trips over views of trainable parameters taken under ``no_grad``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad(), autocast:
            return measure_flops(lambda: model(video))
    finally:
        for p in trainable:
            p.requires_grad_(True)


class _RssSampler:
    """Peak resident set size of this process while active (a polling thread; CPU only).

    Reads ``/proc/self/statm`` every 10 ms (a few microseconds each, so timing is unaffected);
    elsewhere falls back to ``resource``'s lifetime high-water mark.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # pragma: no cover - not Linux
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "_RssSampler":
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def bench_one(
    model: nn.Module,
    preset: str,
    size: tuple[int, int],
    frames: int,
    device: torch.device,
    dtype: str,
    repeats: int,
    warmup: int = 1,
    compile: bool = False,
) -> BenchResult:
    """Time ``repeats`` forwards of a ``(1, frames, 3, H, W)`` clip after ``warmup`` untimed ones.

    ``compile``: time ``torch.compile(model)`` (inductor, static shapes); FLOPs are counted on
    the eager model and the compiling call is timed apart (``compile_s``), never in ``ms_per_clip``.
    """
    h, w = size
    video = torch.randn(1, frames, 3, h, w, device=device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=DTYPES[dtype]) if dtype != "fp32" else nullcontext()
    )
    flops, attn = count_flops(model, video, autocast)  # also serves as the first warm-up
    cuda = device.type == "cuda"
    compile_s = None
    run: Any = model
    if compile:
        from gemdepth.compile import CompiledCall

        torch._dynamo.reset()  # each row compiles its own shapes, never hitting the recompile limit
        run = CompiledCall(model, f"{preset} forward", dynamic=False)
    with torch.no_grad(), autocast:
        if compile:
            start = time.perf_counter()
            run(video)
            if cuda:
                torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - start
        for _ in range(max(0, warmup - 1)):
            run(video)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        with nullcontext() if cuda else _RssSampler() as sampler:
            for _ in range(repeats):
                start = time.perf_counter()
                run(video)
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else sampler.peak  # type: ignore[union-attr]
    ms = statistics.median(times) * 1000
    return BenchResult(
        preset=preset,
        height=h,
        width=w,
        frames=frames,
        device=str(device),
        dtype=dtype,
        ms_per_clip=ms,
        frames_per_s=frames / (ms / 1000),
        peak_mem_mib=peak / 2**20,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gflops_per_frame=flops / frames / 1e9,
        attn_gflops_per_frame=attn / frames / 1e9,
        compiled=compile and getattr(run, "failed", None) is None,
        compile_s=compile_s,
        cpu_linear=resolved_cpu_linear_backend() if device.type == "cpu" and dtype == "fp32" else None,
    )


def format_table(rows: Sequence[BenchResult]) -> str:
    header = [
        "preset", "size", "T", "device", "dtype", "ms/clip", "frames/s",
        "peak MiB", "params M", "GFLOPs/frame", "attn GFLOPs/frame",
    ]
    lines = [
        [
            r.preset,
            f"{r.height}x{r.width}",
            str(r.frames),
            r.device,
            r.dtype + ("+compile" if r.compiled else ""),
            f"{r.ms_per_clip:.1f}",
            f"{r.frames_per_s:.2f}",
            f"{r.peak_mem_mib:.0f}",
            f"{r.params_m:.2f}",
            f"{r.gflops_per_frame:.2f}",
            f"{r.attn_gflops_per_frame:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(wd) if i >= 2 else c.ljust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), fmt(["-" * wd for wd in widths]), *(fmt(line) for line in lines)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gemdepth bench",
        description="Forward benchmark with random weights: ms per clip, frames/s, peak memory, "
        "parameters and FLOPs per frame (attention included) per preset, size and clip length.",
    )
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, help="preset names or model YAMLs")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(518, 518)], help="HxW, multiples of 14")
    parser.add_argument("--frames", nargs="+", type=int, default=[8], help="clip lengths T")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16 runs under autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (≥ 1: the FLOP count)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--cpu-linear", choices=CPU_LINEAR_BACKENDS, default=None,
        help="how CPU fp32 inference computes linear layers (default: $GEMDEPTH_CPU_LINEAR or auto: "
             "oneDNN on AMD CPUs, where MKL's sgemm takes a slow path)",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="time torch.compile(model) (inductor; compile time excluded, reported as compile_s in --json)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    from gemdepth.models import build_model

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.compile:
        from gemdepth.compile import compile_unavailable

        reason = compile_unavailable(args.device)
        if reason is not None:
            parser.error(f"--compile: torch.compile cannot run here: {reason}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_linear is not None:
        set_cpu_linear_backend(args.cpu_linear)
    device = torch.device(args.device)
    rows: list[BenchResult] = []
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_model(preset).to(device).eval()
        name = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
        limit = getattr(model, "max_frames", None)
        for size in args.sizes:
            for frames in args.frames:
                if limit is not None and frames > limit:
                    print(f"skip {name} T={frames}: longer than the head's num_frames={limit}", file=sys.stderr)
                    continue
                rows.append(
                    bench_one(model, name, size, frames, device, args.dtype, args.repeats, args.warmup, args.compile)
                )
                print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
