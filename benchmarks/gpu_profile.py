"""Where the GPU time of one GemDepth window goes, and what the memory budget and layout change.

For one model and clip (default GemDepth-VDA ViT-L, 1×32×3×518×518, bf16 autocast,
``torch.inference_mode``), prints:

* milliseconds per part (encoder, each plug-in, head) from CUDA events around each part's forward;
* the whole forward for several ``max_memory`` budgets (the micro-batch size of every per-frame
  stage) and with the head in ``channels_last``: ms per frame and peak GPU memory;
* the kernels that take the most GPU time (``torch.profiler``), grouped by name;
* the large attention calls timed under each SDPA backend (effective TFLOP/s).

Random weights (speed does not depend on them)::

    python benchmarks/gpu_profile.py                    # on the GPU machine (~2 min)
    python benchmarks/gpu_profile.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import TINY, _sync
from gpu_check import _time as _median_seconds


@contextlib.contextmanager
def part_timer(model: nn.Module, device: torch.device) -> Iterator[dict[str, float]]:
    """Milliseconds spent in the encoder, each plug-in and the head (CUDA events; wall clock on CPU)."""
    parts = {"encoder": model.encoder, "head": model.head}
    parts.update({f"plugin.{name}": p for name, p in model.plugins.items()})
    marks: dict[str, list[Any]] = {name: [] for name in parts}
    handles = []

    def now() -> Any:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    for name, module in parts.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: marks[name].append([now()])))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: marks[name][-1].append(now())))
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
    _sync(device)
    for name, pairs in marks.items():
        total = 0.0
        for start, end in pairs:
            total += start.elapsed_time(end) if device.type == "cuda" else (end - start) * 1000
        result[name] = total


def attention_backends(shape: tuple[int, int, int, int], keys: int, device: torch.device, dtype: torch.dtype,
                       repeats: int) -> dict[str, str]:
    """ms and TFLOP/s of one SDPA call of ``shape`` (B, heads, N, D) under each backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, n, d = shape
    q = torch.randn(b, h, n, d, device=device, dtype=dtype)
    k = torch.randn(b, h, keys, d, device=device, dtype=dtype)
    v = torch.randn_like(k)
    flops = 4 * b * h * n * keys * d
    out = {}
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        if not hasattr(SDPBackend, backend) or (backend == "MATH" and n * keys > 2**28):
            continue
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                F.scaled_dot_product_attention(q, k, v)
                seconds = _median_seconds(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)
            out[backend.split("_")[0].lower()] = f"{seconds * 1000:.2f} ms ({flops / seconds / 1e12:.0f} TFLOP/s)"
        except RuntimeError as err:
            out[backend.split("_")[0].lower()] = f"refused: {str(err).splitlines()[0][:80]}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="gemdepth-vda-vitl")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--budgets", default="256MB,1GB,4GB,none")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    frames = args.frames or (4 if args.tiny else 32)
    size = args.size or (28 if args.tiny else 518)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    repeats = 1 if args.tiny else 3
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from gemdepth.models import build_model

    torch.manual_seed(0)
    with device:
        model = build_model(TINY[args.model] if args.tiny else args.model)
    model = model.to(device).eval()
    video = torch.randn(1, frames, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    report: dict[str, Any] = {"model": args.model, "frames": frames, "size": size, "torch": torch.__version__}

    def forward() -> Tensor:
        return model(video).depth

    with torch.inference_mode(), autocast:
        forward()
        with part_timer(model, device) as parts:
            forward()
        report["parts_ms"] = {k: round(v, 2) for k, v in parts.items()}
        print("parts (ms, one forward):", report["parts_ms"], flush=True)

        variants = []
        for budget in args.budgets.split(","):
            for channels_last in (False, True):
                model.set_max_memory(None if budget == "none" else budget)
                model.head.channels_last = channels_last
                forward()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = _median_seconds(forward, device, repeats)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                row = {"max_memory": budget, "channels_last": channels_last,
                       "ms_per_frame": round(seconds * 1000 / frames, 3), "peak_gb": round(peak, 2)}
                variants.append(row)
                print("variant:", row, flush=True)
        report["variants"] = variants
        model.set_max_memory("256MB")
        model.head.channels_last = False

        if device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                forward()
                _sync(device)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
            print(table, flush=True)
            report["kernels"] = table

    tokens = (size // 14) ** 2
    calls = {"astt spatial (all frames)": ((1, 32 if not args.tiny else 4, 8192, 32), frames * tokens),
             "encoder block": ((frames, 16 if not args.tiny else 2, tokens + 1, 64), tokens + 1)}
    report["attention"] = {}
    for label, (shape, keys) in calls.items():
        report["attention"][label] = attention_backends(shape, keys, device, dtype, repeats)
        print(f"attention {label} q{list(shape)} keys {keys}:", report["attention"][label], flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
