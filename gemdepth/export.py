"""``gemdepth export``: the window model as ONNX or as a ``torch.export`` program, checked on the spot.

The exported graph is one inference window: ``video`` ``(1, T, 3, H, W)`` (ImageNet-normalised
float32, T fixed at export, H and W any multiples of 14 from 42 to 4200) → ``depth`` ``(1, T, H, W)`` and, for
models with GEM, ``pose_enc`` ``(1, T, 9)`` (the last camera-head iteration), ``extrinsics``
``(1, T, 4, 4)`` and ``intrinsics`` ``(1, T, 3, 3)``. Long videos go through the same windowing
as eager inference: :class:`OnnxWindowModel` is a callable :func:`gemdepth.infer_video` accepts.

Two things of the eager model do not trace with dynamic sizes, so export swaps them while it
runs (:func:`export_mode`): the memory budget's frame slicing (its sizes would be frozen to the
example; export runs every stage unsliced) and DINOv2's pos-embed resampling, whose bicubic
*scale factors* depend on the size (``F.interpolate`` needs Python floats). The latter is
rewritten as two interpolation matrices built from tensors (:func:`traceable_pos_embed`): the
same sampling positions and cubic weights as PyTorch's bicubic (A = -0.75, border clamping).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "ExportReport",
    "OnnxWindowModel",
    "WindowModel",
    "export_mode",
    "export_onnx",
    "export_program",
    "main",
    "traceable_pos_embed",
]

PATCH = 14
CAMERA_OUTPUTS = ("pose_enc", "extrinsics", "intrinsics")
MIN_PATCHES = 3  # smallest grid side (42 px): the ½× DPT level needs 2 rows, which torch.export guards
MAX_PATCHES = 300  # largest exported grid side (4200 px)
ONNX_OPSET = 18
CUBIC_A = -0.75  # PyTorch's bicubic coefficient


# ---------------------------------------------------------------------------------- the graph
class WindowModel(nn.Module):
    """``video (1, T, 3, H, W)`` → a tuple ``(depth, [pose_enc, extrinsics, intrinsics])``."""

    def __init__(self, model: nn.Module, cameras: bool) -> None:
        super().__init__()
        self.model = model
        self.cameras = cameras

    @property
    def output_names(self) -> list[str]:
        return ["depth", *(CAMERA_OUTPUTS if self.cameras else ())]

    def forward(self, video: Tensor) -> tuple[Tensor, ...]:
        out = self.model(video)
        if not self.cameras:
            return (out.depth,)
        return (out.depth, out.pose_enc[-1], out.extrinsics, out.intrinsics)


def _cubic_matrix(out_size: int, in_size: int, offset: float, device: torch.device) -> Tensor:
    """``(out, in)`` weights of PyTorch's bicubic resampling with scale factor ``(out + offset) / in``.

    Source position ``(i + 0.5) · in / (out + offset) - 0.5``, four taps with the cubic
    convolution kernel (A = -0.75), indices clamped to the border, as ``upsample_bicubic2d``.
    """
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    size = torch.ones(out_size, device=device, dtype=torch.float32).sum()  # out_size as a tensor (traceable)
    src = (dst + 0.5) * (in_size / (size + offset)) - 0.5
    base = torch.floor(src)
    t = src - base
    a = CUBIC_A
    x0, x1, x2, x3 = t + 1.0, t, 1.0 - t, 2.0 - t
    far = lambda x: ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a  # noqa: E731  |x| in [1, 2]
    near = lambda x: ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0  # noqa: E731  |x| in [0, 1]
    weights = torch.stack([far(x0), near(x1), near(x2), far(x3)], dim=-1)  # (out, 4)
    taps = base.to(torch.int64)[:, None] + torch.arange(-1, 3, device=device)[None, :]
    taps = taps.clamp(0, in_size - 1)
    columns = torch.arange(in_size, device=device)
    onehot = (taps[..., None] == columns).to(torch.float32)  # (out, 4, in)
    return (onehot * weights[..., None]).sum(1)


def traceable_pos_embed(pos_embed: Tensor, grid_h: int, grid_w: int, offset: float = 0.1) -> Tensor:
    """:func:`gemdepth.models.encoder.interpolate_pos_embed` in tensor operations only.

    Same numbers (to float32 rounding): separable bicubic as two matrices; the native grid keeps
    the table unchanged, chosen with ``torch.where`` so no size is frozen by a Python branch.
    """
    n = pos_embed.shape[1] - 1
    side = int(round(n**0.5))
    dim = pos_embed.shape[-1]
    table = pos_embed.float()
    grid = table[0, 1:].reshape(side, side, dim)
    wy = _cubic_matrix(grid_h, side, offset, pos_embed.device)
    wx = _cubic_matrix(grid_w, side, offset, pos_embed.device)
    eye_y = (torch.arange(grid_h, device=grid.device)[:, None] == torch.arange(side, device=grid.device)).float()
    eye_x = (torch.arange(grid_w, device=grid.device)[:, None] == torch.arange(side, device=grid.device)).float()
    native = (wy.shape[0] * torch.ones((), device=grid.device) == side) & (
        wx.shape[0] * torch.ones((), device=grid.device) == side
    )
    wy = torch.where(native, eye_y, wy)
    wx = torch.where(native, eye_x, wx)
    out = torch.einsum("ia,abc,jb->ijc", wy, grid, wx).reshape(1, grid_h * grid_w, dim)
    return torch.cat([table[:, :1], out], dim=1).to(pos_embed.dtype)


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Make ``model`` traceable with dynamic H, W; everything is restored on exit.

    * every ``max_memory`` budget off and the ``bytes_per_*`` estimates stubbed (their ``int()``
      of a size would freeze it; with no budget each stage runs on the whole window anyway);
    * the encoder's pos-embed resampling → :func:`traceable_pos_embed`.
    """
    import gemdepth.models.encoder as encoder_module

    saved_budget: list[tuple[nn.Module, Any]] = []
    stubbed: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if hasattr(module, "max_memory"):
            saved_budget.append((module, module.max_memory))
            module.max_memory = None
        for name in dir(type(module)):
            if name.startswith("bytes_per_") and callable(getattr(type(module), name, None)):
                setattr(module, name, lambda *args, **kwargs: 0)
                stubbed.append((module, name))
    original = getattr(encoder_module, "interpolate_pos_embed", None)
    if original is not None:
        encoder_module.interpolate_pos_embed = traceable_pos_embed  # type: ignore[assignment]
    try:
        yield
    finally:
        if original is not None:
            encoder_module.interpolate_pos_embed = original  # type: ignore[assignment]
        for module, name in stubbed:
            module.__dict__.pop(name, None)
        for module, budget in saved_budget:
            module.max_memory = budget


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    hp = torch.export.Dim("patches_h", min=MIN_PATCHES, max=MAX_PATCHES)
    wp = torch.export.Dim("patches_w", min=MIN_PATCHES, max=MAX_PATCHES)
    return {"video": {3: PATCH * hp, 4: PATCH * wp}}


def _example(frames: int, height: int, width: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, 3, height, width, generator=generator)


def _check_size(height: int, width: int) -> None:
    for label, size in (("height", height), ("width", width)):
        if size % PATCH or not MIN_PATCHES * PATCH <= size <= MAX_PATCHES * PATCH:
            raise ValueError(
                f"example {label} {size} must be a multiple of {PATCH} in {MIN_PATCHES * PATCH}..{MAX_PATCHES * PATCH} "
                f"(the exported graph takes any such size)"
            )


# ---------------------------------------------------------------------------------- checks
@dataclass
class ExportReport:
    """What an export wrote and how far the exported graph is from the eager model."""

    path: Path
    format: str
    outputs: list[str]
    frames: int
    seconds: float
    # per checked size "HxW": per output, max |exported - eager| and that / max |eager|
    differences: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def worst_relative(self) -> float:
        return max((d["relative"] for size in self.differences.values() for d in size.values()), default=0.0)

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} ({self.format}, window of {self.frames} frames, outputs {self.outputs}) "
               f"in {self.seconds:.1f} s"]
        for size, per in self.differences.items():
            parts = ", ".join(f"{k} max|Δ| {d['absolute']:.3g} (rel {d['relative']:.3g})" for k, d in per.items())
            out.append(f"  check at {size}: {parts}")
        return out


def _compare(exported: Sequence[Tensor], eager: Sequence[Tensor], names: Sequence[str]) -> dict[str, dict[str, float]]:
    result = {}
    for name, a, b in zip(names, exported, eager):
        a = torch.as_tensor(a, dtype=torch.float64)
        b = b.detach().to(torch.float64)
        # equal entries (also ±inf / nan in both, e.g. a random model's degenerate cameras) count as 0
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        delta = torch.where(same, torch.zeros_like(a), (a - b).abs()).nan_to_num(nan=float("inf"))
        diff = float(delta.max()) if delta.numel() else 0.0
        finite = b[torch.isfinite(b)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        result[name] = {"absolute": diff, "relative": diff / scale if scale > 0 else diff}
    return result


def _check_sizes(height: int, width: int) -> list[tuple[int, int]]:
    other = (height + 2 * PATCH, width - PATCH if width > 3 * PATCH else width + PATCH)
    return [(height, width), other]


def _metadata(model: nn.Module, wrapper: WindowModel, frames: int) -> dict[str, str]:
    config = getattr(model, "config", None)
    return {
        "gemdepth_config": json.dumps(config, sort_keys=True) if config is not None else "",
        "gemdepth_frames": str(frames),
        "gemdepth_outputs": ",".join(wrapper.output_names),
        "gemdepth_metric": str(bool(getattr(model, "is_metric", False))).lower(),
        "gemdepth_input": "video (1, T, 3, H, W) float32, RGB / 255, ImageNet mean/std normalised; "
        "H, W multiples of 14",
    }


def _prepare(model: nn.Module, frames: int, height: int, width: int) -> tuple[WindowModel, Tensor]:
    _check_size(height, width)
    limit = getattr(model, "max_frames", None)
    if isinstance(limit, int) and frames > limit:
        raise ValueError(f"window of {frames} frames is longer than the model's num_frames={limit}")
    model = model.eval()
    example = _example(frames, height, width)
    with torch.no_grad():
        out = model(example)
    return WindowModel(model, cameras=getattr(out, "extrinsics", None) is not None).eval(), example


def _trace(wrapper: WindowModel, example: Tensor) -> torch.export.ExportedProgram:
    with torch.no_grad(), export_mode(wrapper.model):
        return torch.export.export(wrapper, (example,), dynamic_shapes=_dynamic_shapes(), strict=False)


def export_program(
    model: nn.Module, path: str | Path, frames: int = 32, height: int = 280, width: int = 504, check: bool = True
) -> ExportReport:
    """Write the window model as a ``torch.export`` program (``.pt2``); reload it and compare with eager."""
    from gemdepth.atomic import atomic_path

    path = Path(path)
    wrapper, example = _prepare(model, frames, height, width)
    start = time.perf_counter()
    program = _trace(wrapper, example)
    extra = {f"{k}.txt": v for k, v in _metadata(model, wrapper, frames).items()}
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp, extra_files=extra)
    report = ExportReport(path, "exported-program", wrapper.output_names, frames, time.perf_counter() - start)
    if check:
        loaded = torch.export.load(path).module()
        for h, w in _check_sizes(height, width):
            video = _example(frames, h, w, seed=1)
            with torch.no_grad():
                ref = wrapper(video)
                got = loaded(video)
            report.differences[f"{h}x{w}"] = _compare(got, ref, wrapper.output_names)
    return report


def export_onnx(
    model: nn.Module,
    path: str | Path,
    frames: int = 32,
    height: int = 280,
    width: int = 504,
    opset: int = ONNX_OPSET,
    check: bool = True,
) -> ExportReport:
    """Write the window model as ONNX (opset ≥ 18, attention decomposed into MatMul/Softmax) and
    compare ONNX Runtime (CPU) with eager at two sizes."""
    import onnx

    from gemdepth.atomic import atomic_path

    if opset < ONNX_OPSET:
        raise ValueError(f"opset must be ≥ {ONNX_OPSET}, got {opset}")
    path = Path(path)
    wrapper, example = _prepare(model, frames, height, width)
    start = time.perf_counter()
    program = _trace(wrapper, example)
    with export_mode(wrapper.model):
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["video"],
            output_names=wrapper.output_names,
            optimize=True,
            verbose=False,
        )
    proto = onnx_program.model_proto  # type: ignore[union-attr]
    for key, value in _metadata(model, wrapper, frames).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    large = proto.ByteSize() > 2**31 - 2**26  # protobuf's 2 GB limit: weights go to PATH.data
    if large:
        onnx.save_model(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
    report = ExportReport(path, "onnx", wrapper.output_names, frames, time.perf_counter() - start)
    if check:
        runner = OnnxWindowModel(path)
        for h, w in _check_sizes(height, width):
            video = _example(frames, h, w, seed=1)
            with torch.no_grad():
                ref = wrapper(video)
            got = runner.run(video)
            report.differences[f"{h}x{w}"] = _compare(got, ref, wrapper.output_names)
    return report


# ---------------------------------------------------------------------------------- running ONNX
class OnnxWindowModel:
    """An exported ONNX window model as a callable for :func:`gemdepth.infer_video`.

    ``model(video)`` takes ``(1, T, 3, H, W)`` (torch or numpy), runs ONNX Runtime and returns a
    tuple of torch tensors in the official order ``(depth, pose_enc, extrinsics, intrinsics)``
    (``depth`` alone for models without cameras). ``max_frames`` is the exported window length;
    ``is_metric`` tells the windowing whether depth is metric.
    """

    training = False

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist (write one with `gemdepth export`)")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        shape = self.session.get_inputs()[0].shape
        self.max_frames = int(meta.get("gemdepth_frames", shape[1]))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.is_metric = meta.get("gemdepth_metric", "false") == "true"
        self.config = json.loads(meta["gemdepth_config"]) if meta.get("gemdepth_config") else None

    def run(self, video: Tensor | np.ndarray) -> tuple[Tensor, ...]:
        """ONNX Runtime on one window; outputs as torch tensors (CPU)."""
        array = video.detach().to("cpu", torch.float32).numpy() if isinstance(video, Tensor) else video
        if array.ndim != 5 or array.shape[1] != self.max_frames:
            raise ValueError(
                f"{self.path.name} takes (1, {self.max_frames}, 3, H, W) windows, got {tuple(array.shape)}; "
                f"run it through gemdepth.infer_video(model, frames, window={self.max_frames}, ...)"
            )
        outs = self.session.run(self.output_names, {"video": np.ascontiguousarray(array, dtype=np.float32)})
        return tuple(torch.from_numpy(o) for o in outs)

    def __call__(self, video: Tensor) -> tuple[Tensor, ...]:
        outs = self.run(video)
        if len(outs) == 1:
            return outs
        depth, pose_enc, extrinsics, intrinsics = outs
        return (depth.to(video.device), pose_enc, extrinsics.to(video.device), intrinsics.to(video.device))


# ---------------------------------------------------------------------------------- command line
FORMATS = {"onnx": export_onnx, "exported-program": export_program}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gemdepth export",
        description="Export one inference window (fixed length, H and W any multiples of 14) as ONNX or a "
        "torch.export program, then compare it with the eager model and print the largest differences.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output file (.onnx or .pt2)")
    p.add_argument("--ckpt", default=None, help="gemdepth checkpoint or official weights (with --model)")
    p.add_argument("--model", default=None, help="model preset or YAML; without --ckpt, the preset's released weights")
    p.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    p.add_argument("--frames", type=int, default=32, help="window length T (default 32)")
    p.add_argument("--height", type=int, default=280, help="example height, multiple of 14 (default 280)")
    p.add_argument("--width", type=int, default=504, help="example width, multiple of 14 (default 504)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (≥ {ONNX_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the eager model")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``gemdepth export``; 0 on success, 1 when the check fails (relative difference > 1e-3), 2 on bad input."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    weights = args.ckpt if args.ckpt is not None else args.model
    if weights is None:
        print("gemdepth export: pass --ckpt FILE (and --model for official weights) or --model PRESET", file=sys.stderr)
        return 2
    if args.frames < 1:
        print(f"gemdepth export: --frames must be ≥ 1, got {args.frames}", file=sys.stderr)
        return 2
    import gemdepth

    try:
        model = gemdepth.load_model(weights, config=args.model, device="cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"gemdepth export: cannot load {weights}: {err}", file=sys.stderr)
        return 2
    kwargs: dict[str, Any] = {"frames": args.frames, "height": args.height, "width": args.width,
                              "check": not args.no_check}
    if args.format == "onnx":
        kwargs["opset"] = args.opset
    try:
        report = FORMATS[args.format](model, args.out, **kwargs)
    except ValueError as err:
        print(f"gemdepth export: {err}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    if report.differences and report.worst_relative() > 1e-3:
        print(f"gemdepth export: the exported model differs from eager by {report.worst_relative():.3g} "
              f"(relative); do not trust it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
