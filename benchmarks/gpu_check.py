"""One prepared GPU check (≤ 8 min on one H100/H200): forward, whole pipeline, training step, SDPA backends.

Prints one table (and writes it as JSON with ``--json``):

* forward of GemDepth-VDA ViT-S and ViT-L, 1×32×3×518×518, bf16 autocast, under
  ``torch.inference_mode``: ms per output frame and peak GPU memory, eager and ``torch.compile``-d
  (compile time reported apart);
* the whole ``gemdepth infer`` pipeline (reader → cached-encoder windowing → every writer) on a
  synthetic 720p video, frames/s;
* one training step of GemDepth-VDA ViT-L (32×518², bf16, frozen encoder, AdamW, the project's
  loss), seconds and peak GB, without and with activation checkpointing of plug-ins and head;
* which ``scaled_dot_product_attention`` backends each attention of the model can use (each
  distinct call is replayed under ``sdpa_kernel`` with one backend at a time).

Weights are random (speed and memory do not depend on them). Every row runs in its own
try/except: a failure prints its error in the table instead of stopping the check, and rows are
skipped (said so) once the time budget is spent. ``--device cpu --tiny`` runs the same code on
tiny configs in seconds (the test suite does, so the script cannot rot)::

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# tiny stand-ins for ViT-S / ViT-L with the same structure (VDA head, GEM, ASTT)
_TINY_PLUGINS = [
    {"name": "gem", "num_heads": 4, "num_register_tokens": 4, "camera_trunk_depth": 1},
    {"name": "astt", "num_heads": 4, "depth": 1},
]
TINY = {
    "gemdepth-vda-vits": {
        "host": "vda",
        "encoder": {"embed_dim": 64, "depth": 4, "num_heads": 2, "layer_idx": [0, 1, 2, 3]},
        "head": {"features": 32, "out_channels": [24, 48, 64, 96], "num_frames": 32},
        "plugins": _TINY_PLUGINS,
    },
    "gemdepth-vda-vitl": {
        "host": "vda",
        "encoder": {"embed_dim": 128, "depth": 6, "num_heads": 4, "layer_idx": [1, 2, 4, 5]},
        "head": {"features": 32, "out_channels": [32, 64, 96, 128], "num_frames": 32},
        "plugins": _TINY_PLUGINS,
    },
}
BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


@dataclass
class Row:
    """One line of the table: what was measured, the figures, or the error."""

    check: str
    setting: str
    value: str = ""
    memory: str = ""
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    device: torch.device
    tiny: bool
    size: int
    frames: int
    dtype: torch.dtype
    compile: bool
    budget_s: float
    video_hw: tuple[int, int]
    video_frames: int
    repeats: int = 3
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


# --------------------------------------------------------------------------- helpers
def _model(name: str, s: Settings) -> nn.Module:
    from gemdepth.models import build_model

    torch.manual_seed(0)
    with s.device:  # initialise the weights on the device (ViT-L on CPU alone takes seconds)
        model = build_model(TINY[name] if s.tiny else name)
    from gemdepth.models.chunking import tune_for_device

    return tune_for_device(model.to(s.device).eval(), s.device)  # the budget and layout load_model sets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak GPU memory allocated (CUDA) or peak process RSS (CPU) inside the block, in bytes."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak"] = torch.cuda.max_memory_allocated(device)
    else:
        from gemdepth.bench import _RssSampler

        with _RssSampler() as sampler:
            yield out
        out["peak"] = sampler.peak


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def _autocast(s: Settings) -> contextlib.AbstractContextManager:
    if s.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=s.device.type, dtype=s.dtype)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- checks
def check_forward(name: str, s: Settings, compiled: bool) -> Row:
    """ms per output frame and peak memory of one 32-frame forward (bf16, inference_mode)."""
    mode = "compiled" if compiled else "eager"
    row = Row("forward", f"{name} {s.frames}x{s.size}x{s.size} {str(s.dtype)[6:]} {mode}")
    model = _model(name, s)
    video = torch.randn(1, s.frames, 3, s.size, s.size, device=s.device)
    run: Callable[[Tensor], Any] = model
    if compiled:
        from gemdepth.compile import CompiledCall, compile_unavailable

        reason = compile_unavailable(s.device)
        if reason is not None:
            raise RuntimeError(f"torch.compile unavailable: {reason}")
        torch._dynamo.reset()
        run = CompiledCall(model, f"{name} forward", dynamic=False)
    with torch.inference_mode(), _autocast(s):
        start = time.perf_counter()
        run(video)  # warm-up (and compilation)
        _sync(s.device)
        first = time.perf_counter() - start
        if compiled and getattr(run, "failed", None) is not None:
            raise RuntimeError(f"compilation failed: {run.failed}")  # type: ignore[attr-defined]
        with _peak_memory(s.device) as mem:
            seconds = _time(lambda: run(video), s.device, repeats=s.repeats)
    row.value = f"{seconds * 1000 / s.frames:.2f} ms/frame"
    row.memory = _gb(mem["peak"])
    row.note = f"{seconds * 1000:.0f} ms/clip" + (f", compile {first:.0f} s" if compiled else "")
    row.data = {"ms_per_frame": seconds * 1000 / s.frames, "peak_bytes": mem["peak"], "first_call_s": first}
    return row


def check_precision(name: str, s: Settings) -> list[Row]:
    """Depth under bf16 / fp16 autocast against the fp32 forward of the same weights and clip.

    The figure is the mean relative difference |d - d32| / d32 over pixels (depth is positive); the
    clip is a smooth random field rather than white noise so the depth is not degenerate."""
    frames = min(s.frames, 8)
    model = _model(name, s)
    last_conv = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():  # random weights predict mostly 0 after the final ReLU; lift it so depth is positive
        last_conv.bias.add_(1.0)
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, frames, 3, 8, 8, generator=g)
    video = F.interpolate(coarse.flatten(0, 1), size=(s.size, s.size), mode="bicubic", align_corners=False)
    video = ((video - 0.45) / 0.25).unflatten(0, (1, frames)).to(s.device)
    with torch.inference_mode():
        reference = model(video).depth.float()
        rows = []
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(device_type=s.device.type, dtype=dtype):
                depth = model(video).depth.float()
            positive = reference > 0
            rel = ((depth - reference).abs()[positive] / reference[positive]).mean().item()
            finite = bool(torch.isfinite(depth).all())
            rows.append(
                Row(
                    "precision",
                    f"{name} {frames}x{s.size}x{s.size} {str(dtype)[6:]} vs fp32",
                    value=f"{rel:.2e} rel",
                    note=("all finite" if finite else "NON-FINITE values")
                    + f", {positive.float().mean().item():.0%} of pixels positive in fp32",
                    data={"mean_rel_diff": rel, "finite": finite},
                )
            )
    return rows


def _synthetic_video(path: Path, frames: int, hw: tuple[int, int]) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import make_clip

    return make_clip(path, frames, *hw)


def check_pipeline(name: str, s: Settings, video: Path, out: Path) -> Row:
    """The whole ``gemdepth infer`` pipeline (reader, windowing with the encoder cache, writers)."""
    from gemdepth.inference import InferenceOptions, OutputOptions, open_source, run_source

    h, w = s.video_hw
    row = Row("infer pipeline", f"{name} {s.video_frames} frames {h}x{w} {str(s.dtype)[6:]}")
    model = _model(name, s)
    options = InferenceOptions(input_size=s.size, device=str(s.device), dtype=s.dtype)
    with _peak_memory(s.device) as mem:
        info = run_source(model, open_source(video), out, options, OutputOptions(progress=False))
    row.value = f"{info['frames_per_second']:.2f} frames/s"
    row.memory = _gb(mem["peak"])
    row.note = f"network input {info['network_input'][0]}x{info['network_input'][1]}, {info['seconds']:.1f} s"
    row.data = {"frames_per_second": info["frames_per_second"], "peak_bytes": mem["peak"], "run": info}
    return row


def _training_batch(s: Settings) -> dict[str, Tensor]:
    b, t, h = 1, s.frames, s.size
    g = torch.Generator().manual_seed(0)
    ext = torch.eye(4).repeat(b, t, 1, 1)
    ext[..., 0, 3] = torch.linspace(0, 1, t)
    intr = torch.tensor([[0.8 * h, 0, h / 2], [0, 0.8 * h, h / 2], [0, 0, 1]]).repeat(b, t, 1, 1)
    batch = {
        "image": torch.randn(b, t, 3, h, h, generator=g),
        "depth": 1 + torch.rand(b, t, h, h, generator=g),
        "valid": torch.ones(b, t, h, h, dtype=torch.bool),
        "is_disparity": torch.zeros(b, dtype=torch.bool),
        "has_pose": torch.ones(b, dtype=torch.bool),
        "extrinsics": ext,
        "intrinsics": intr,
    }
    return {k: v.to(s.device) for k, v in batch.items()}


def check_training(name: str, s: Settings, checkpointing: bool) -> Row:
    """One optimiser step (frozen encoder, bf16 autocast, AdamW, GemDepthLoss): seconds and peak memory."""
    from gemdepth.losses import GemDepthLoss

    setting = f"{name} {s.frames}x{s.size}x{s.size} {str(s.dtype)[6:]} frozen encoder"
    row = Row("train step", setting + (", checkpointing plug-ins+head" if checkpointing else ""))
    model = _model(name, s).train()
    model.encoder.requires_grad_(False)
    model.encoder.eval()
    if checkpointing:
        model.set_checkpointing(plugins=True, head=True)  # type: ignore[operator]
    params = [p for p in model.parameters() if p.requires_grad]
    fused = s.device.type == "cuda"
    optim = torch.optim.AdamW(params, lr=1e-5, fused=fused)
    loss_fn = GemDepthLoss()
    batch = _training_batch(s)

    def step() -> float:
        optim.zero_grad(set_to_none=True)
        with _autocast(s):
            out = model(batch["image"])
        terms = loss_fn(out.depth, batch, out.pose_enc)
        terms["total"].backward()
        optim.step()
        return float(terms["total"].detach())

    step()  # allocates the optimiser state
    with _peak_memory(s.device) as mem:
        seconds = _time(step, s.device, repeats=max(1, s.repeats - 1))
    row.value = f"{seconds:.3f} s/step"
    row.memory = _gb(mem["peak"])
    row.note = f"{sum(p.numel() for p in params) / 1e6:.1f} M trainable"
    row.data = {"seconds": seconds, "peak_bytes": mem["peak"]}
    return row


class _SdpaRecorder(TorchFunctionMode):
    """Records every ``scaled_dot_product_attention`` call: the module it ran in and its arguments."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[str] = []
        self.calls: dict[tuple, dict[str, Any]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            from gemdepth.models.sdpa import autocast_view

            q, k, v = autocast_view(*args[:3])  # what the kernel gets: autocast casts SDPA's inputs
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            where = self.stack[-1] if self.stack else "?"
            key = (where, tuple(q.shape), tuple(k.shape), q.dtype, mask is not None, bool(kwargs.get("is_causal")))
            if key not in self.calls:
                self.calls[key] = {
                    "module": where,
                    "q": tuple(q.shape),
                    "k": tuple(k.shape),
                    "dtype": str(q.dtype)[6:],
                    "mask": None if mask is None else (tuple(mask.shape), str(mask.dtype)[6:]),
                    "args": (q.shape, k.shape, v.shape, q.dtype, q.device, mask, dict(kwargs)),
                    "contiguous_last_dim": q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1,
                }
        return func(*args, **kwargs)


def _attention_owner(name: str) -> str:
    """A readable owner of an attention module: encoder / gem / astt / head (motion module)."""
    parts = name.split(".")
    if parts[0] == "plugins" and len(parts) > 1:
        return f"{parts[1]}." + ".".join(p for p in parts[2:] if not p.isdigit())
    return ".".join(p for p in parts if not p.isdigit())


def check_sdpa(name: str, s: Settings) -> list[Row]:
    """Which SDPA backends each attention call of one forward can use (one backend at a time)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model(name, s)
    names = {m: n for n, m in model.named_modules()}
    recorder = _SdpaRecorder(names)
    def enter(module: nn.Module, args: Any) -> None:
        recorder.stack.append(_attention_owner(names.get(module, type(module).__name__)))

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        recorder.stack.pop()  # returns None: the output is left as it is

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        video = torch.randn(1, s.frames, 3, s.size, s.size, device=s.device)
        with torch.inference_mode(), _autocast(s), recorder:
            model(video)
    finally:
        for hook in hooks:
            hook.remove()
    del model
    _free(s.device)
    rows = []
    for call in recorder.calls.values():
        q_shape, k_shape, v_shape, dtype, device, mask, kwargs = call["args"]
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(q_shape, dtype=dtype, device=device, generator=g)
        k = torch.randn(k_shape, dtype=dtype, device=device, generator=g)
        v = torch.randn(v_shape, dtype=dtype, device=device, generator=g)
        kwargs = {key: val for key, val in kwargs.items() if key != "attn_mask"}
        usable, why = [], {}
        for backend in BACKENDS:
            if not hasattr(SDPBackend, backend):
                continue
            with warnings.catch_warnings(record=True) as caught:  # torch warns why a kernel was refused
                warnings.simplefilter("always")
                try:
                    with torch.inference_mode(), sdpa_kernel([getattr(SDPBackend, backend)]):
                        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
                    usable.append(backend.split("_")[0].lower())
                except RuntimeError as err:
                    reasons = [str(w.message).strip().splitlines()[0][:200] for w in caught]
                    why[backend] = "; ".join(reasons) or str(err).strip().splitlines()[0][:200]
        del q, k, v
        picks = _default_pick(usable)
        mask_text = "" if call["mask"] is None else f", mask {call['mask'][0]} {call['mask'][1]}"
        rows.append(
            Row(
                "sdpa backends",
                f"{call['module']} q{list(call['q'])} {call['dtype']}{mask_text}",
                value=", ".join(usable) or "none",
                note=(f"default picks {picks}" if picks else "")
                + ("" if "flash" in usable or "FLASH_ATTENTION" not in why else f"; flash: {why['FLASH_ATTENTION'][:90]}"),
                data={**{k: v for k, v in call.items() if k != "args"}, "usable": usable, "why_not": why},
            )
        )
    _free(s.device)
    return rows


def _default_pick(usable: list[str]) -> str | None:
    """The backend SDPA's dispatcher tries first among ``usable`` (torch's priority order)."""
    from torch.nn.attention import SDPBackend

    try:
        order = [int(v) for v in torch._C._get_sdp_priority_order()]
    except (AttributeError, RuntimeError):  # older torch: flash, efficient, math, cudnn
        order = [1, 2, 0, 3]
    names = {int(getattr(SDPBackend, b)): b.split("_")[0].lower() for b in BACKENDS if hasattr(SDPBackend, b)}
    return next((names[v] for v in order if names.get(v) in usable), None)


# --------------------------------------------------------------------------- driver
def _guarded(rows: list[Row], check: str, setting: str, s: Settings, need_s: float, fn: Callable[[], Any]) -> None:
    """Run one check; its error or a budget skip becomes its row."""
    if s.left() < need_s:
        note = f"time budget: {max(s.left(), 0):.0f} s left, needs ~{need_s:.0f}"
        rows.append(Row(check, setting, "skipped", note=note))
        print(_format(rows[-1:], header=False), flush=True)
        return
    start = time.perf_counter()
    try:
        out = fn()
        new = out if isinstance(out, list) else [out]
    except Exception as err:  # noqa: BLE001 - every failure becomes a row of the table
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
        new = [Row(check, setting, "ERROR", note=message, data={"traceback": traceback.format_exc()})]
    finally:
        _free(s.device)
    for row in new:
        row.data["wall_s"] = round(time.perf_counter() - start, 1)
    rows.extend(new)
    print(_format(new, header=False), flush=True)


def _format(rows: list[Row], header: bool = True) -> str:
    cols = ["check", "setting", "value", "memory", "note"]
    cells = [[r.check, r.setting, r.value, r.memory, r.note] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(cols)]
    fmt = lambda line: "  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()  # noqa: E731
    lines = [fmt(cols), fmt(["-" * w for w in widths])] if header else []
    return "\n".join(lines + [fmt(line) for line in cells])


def run_checks(s: Settings, out_dir: Path) -> list[Row]:
    """Every check in order of importance (cheap and essential first, compilation last)."""
    rows: list[Row] = []
    dtype = str(s.dtype)[6:]
    scale = 0.02 if s.tiny else 1.0  # rough seconds each check needs, to skip rather than overrun
    for name in ("gemdepth-vda-vits", "gemdepth-vda-vitl"):
        _guarded(rows, "forward", f"{name} eager {dtype}", s, 30 * scale, lambda n=name: check_forward(n, s, False))
    _guarded(rows, "sdpa backends", "gemdepth-vda-vitl", s, 20 * scale, lambda: check_sdpa("gemdepth-vda-vitl", s))
    _guarded(rows, "precision", "gemdepth-vda-vitl", s, 20 * scale, lambda: check_precision("gemdepth-vda-vitl", s))
    for ckpt in (False, True):
        _guarded(
            rows, "train step", f"gemdepth-vda-vitl checkpointing={ckpt}", s, 40 * scale,
            lambda c=ckpt: check_training("gemdepth-vda-vitl", s, c),
        )
    try:
        video = _synthetic_video(out_dir / "synthetic_720p.mp4", s.video_frames, s.video_hw)
        for name in ("gemdepth-vda-vitl",):
            _guarded(
                rows, "infer pipeline", name, s, 60 * scale,
                lambda n=name: check_pipeline(n, s, video, out_dir / "infer"),
            )
    except Exception as err:  # noqa: BLE001
        rows.append(Row("infer pipeline", "synthetic video", "ERROR", note=f"{type(err).__name__}: {err}"))
    if s.compile:
        for name in ("gemdepth-vda-vits", "gemdepth-vda-vitl"):
            _guarded(
                rows, "forward", f"{name} compiled {dtype}", s, 150 * scale,
                lambda n=name: check_forward(n, s, True),
            )
    else:
        rows.append(Row("forward", "compiled", "skipped", note="--no-compile, or --tiny without --compile"))
    return rows


def environment(device: torch.device) -> str:
    text = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += f" ({props.name}, {props.total_memory / 2**30:.0f} GB, CUDA {torch.version.cuda})"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny configs and sizes (CPU smoke test, seconds)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--compile", action="store_true", help="run the torch.compile rows with --tiny too (minutes on CPU)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds; later rows are skipped past it (default 450)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    s = Settings(
        device=device,
        tiny=args.tiny,
        size=28 if args.tiny else 518,
        frames=8 if args.tiny else 32,
        dtype=torch.float32 if args.tiny and device.type == "cpu" else torch.bfloat16,  # CPU bf16 is slow
        compile=args.compile or not (args.no_compile or args.tiny),
        budget_s=args.budget,
        video_hw=(72, 128) if args.tiny else (720, 1280),
        video_frames=24 if args.tiny else 96,
        repeats=1 if args.tiny else 3,
    )
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: a second spinning OpenMP thread only slows them down
    print(f"# gemdepth GPU check: {environment(device)}{', tiny configs' if args.tiny else ''}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_checks(s, Path(tmp))
    print()
    print(_format(rows))
    print(f"# total {time.perf_counter() - s.started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str))
    return 1 if any(r.value == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
