"""gemdepth vs the official GemDepth code on CPU: same weights, same input, alternating runs in one process.

1. Builds the official ``GemDepth`` (VDA host, ViT-S: the ``vits`` sizes of the official
   ``evaluation/inference/run_video.py``, GEM/ASTT ``embed_dim`` 384 with ``num_heads`` 12, i.e.
   the per-head widths of the released ViT-L) from the checkout passed as ``--official``, with
   seeded weights, saves its ``state_dict`` and loads that file with
   ``gemdepth.load_model(path, config="gemdepth-vda-vits")``; checks that the two depths agree.
2. One forward ``(1, T, 3, H, W)`` each, alternating, under ``torch.inference_mode``.
3. ``--profile``: where each forward spends its CPU time, per top-level part (encoder, GEM,
   ASTT, head, the rest), with each part's heaviest operators (``torch.profiler``).
4. A whole video: the official ``GemDepth.infer_video_depth`` (fp32) vs :func:`gemdepth.infer_video`
   on the same uint8 frames and network input size, alternating; the largest output difference.

The official code is imported from the given path, never copied. Run-time patches applied to it
(none edits a file): to build a ViT-S model at all, to make its inference deterministic, and to
hide a progress bar; see ``OFFICIAL_PATCHES``.

    python benchmarks/bench_vs_official.py --official /tmp/official --profile --json bench_vs_official.json
    python benchmarks/bench_vs_official.py --official /tmp/official --frames 2 --size 28x42 \\
        --video-frames 24 --video-size 30x40 --input-size 28 --repeats 1 --video-repeats 1  # quick check

Needs the ``official`` extra (opencv, easydict: the official code imports them). See
docs/benchmarks_official.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

PRESET = "gemdepth-vda-vits"
# the official run_video.py's 'vits' entry; GEM/ASTT width = encoder width (384) and num_heads
# 12 (= 384 / 32, the per-head widths of the released ViT-L's 1024 / 32), as our preset
OFFICIAL_VITS = {
    "encoder": "vits",
    "features": 64,
    "out_channels": [48, 96, 192, 384],
    "embed_dim": 384,
    "num_heads": 12,
}
OFFICIAL_PATCHES = {
    "pose_encoder_width": "model.gemdepth.GlobalRepresentationEncoder built with enc_embed_dim = "
    "embed_dim (384); the official hard-codes 1024, the ViT-L width, so a ViT-S GemDepth cannot "
    "add its pose embedding otherwise",
    "pose_masks_all": "torch.rand inside model.gemdepth returns zeros: the official forward draws "
    "its training pose masks even at inference; zeros feed every frame its predicted pose, "
    "gemdepth's eval behaviour",
    "astt_dropout_0": "ASTT (spatial/time block) attention dropout_p = 0: the official passes 0.1 "
    "to SDPA even in eval()",
    "no_progress_bar": "model.gemdepth.tqdm returns its iterable (cosmetic: infer_video_depth's "
    "progress bar off)",
    "automatic_fallbacks": "not patches: without the cuRoPE CUDA extension the official imports "
    "its pure-PyTorch RoPE2D, and without xFormers DINOv2 and the motion modules use plain "
    "PyTorch attention (both print a warning)",
}
DEFAULT_TOLERANCE = 1e-4  # max |ours - official| / max |official|: the fixtures' README bound


# --------------------------------------------------------------------------- arguments
def parse_size(text: str) -> tuple[int, int]:
    """``"196x350"`` → ``(196, 350)``; both sides positive multiples of 14 (the patch size)."""
    from gemdepth.bench import parse_size as _parse

    return _parse(text)


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"196x350"`` → ``(196, 350)`` for video frames (any positive size)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like HxW, e.g. 196x350") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be positive")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    from gemdepth.models.cpu_linear import CPU_LINEAR_BACKENDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, default=os.environ.get("GEMDEPTH_OFFICIAL"),
                   help="root of an official GemDepth checkout (has model/gemdepth.py); "
                        "default: $GEMDEPTH_OFFICIAL")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--cpu-linear", choices=CPU_LINEAR_BACKENDS, default=None,
                   help="our linear layers' CPU path (default: $GEMDEPTH_CPU_LINEAR or auto; "
                        "the official code always uses PyTorch's standard op)")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument("--frames", type=int, default=8, help="frames of the forward clip")
    p.add_argument("--size", type=parse_size, default=(196, 350), help="forward input HxW (multiples of 14)")
    p.add_argument("--repeats", type=int, default=6, help="timed forwards per side (after one warm-up)")
    p.add_argument("--video-frames", type=int, default=98, help="frames of the whole-video run (0: skip it)")
    p.add_argument("--video-size", type=parse_frame_size, default=(196, 350), help="video frame HxW")
    p.add_argument("--input-size", type=int, default=None,
                   help="input_size of both pipelines (default: the shorter video side)")
    p.add_argument("--video-repeats", type=int, default=3, help="timed whole-video runs per side")
    p.add_argument("--profile", action="store_true", help="profile the forward of each (torch.profiler)")
    p.add_argument("--profile-repeats", type=int, default=3, help="profiled forwards per side (medians)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest allowed max|ours-official|/max|official| of the depth")
    p.add_argument("--json", type=Path, default=None, help="write the results here (atomic)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (exits with a message naming the fix)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.official is None:
        parser.error("pass --official PATH (an official GemDepth checkout) or set GEMDEPTH_OFFICIAL")
    for name in ("threads", "frames", "repeats", "video_repeats", "profile_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.video_frames < 0:
        parser.error(f"--video-frames must be >= 0, got {args.video_frames}")
    if args.input_size is None:
        args.input_size = min(args.video_size)
    return args


# --------------------------------------------------------------------------- the official code
def import_official(root: Path) -> ModuleType:
    """Import ``model.gemdepth`` from the official checkout at ``root`` (prepended to ``sys.path``)."""
    root = Path(root).resolve()
    if not (root / "model" / "gemdepth.py").is_file():
        raise FileNotFoundError(
            f"{root / 'model' / 'gemdepth.py'} not found: pass the root of an official GemDepth "
            "checkout, e.g. `git -C <mirror> archive HEAD model evaluation config | tar -x -C /tmp/official` "
            "then --official /tmp/official"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import model.gemdepth as official  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            f"importing the official code from {root} failed ({err}); it needs opencv and easydict: "
            "pip install -e '.[official]'"
        ) from err
    if not str(getattr(official, "__file__", "")).startswith(str(root)):
        raise ImportError(f"'model.gemdepth' was imported from {official.__file__}, not from {root}; "
                          "another package named 'model' is on sys.path first")
    return official


class _TorchZeroRand:
    """``torch`` for the official module, except ``rand`` returns zeros (pose masks 'all')."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def rand(*size: Any, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("generator", None)
        return torch.zeros(*size, **kwargs)


def build_official(official: ModuleType, seed: int) -> nn.Module:
    """The official ViT-S GemDepth with ``OFFICIAL_PATCHES`` applied, in eval mode."""
    encoder_cls = official.GlobalRepresentationEncoder
    if not isinstance(encoder_cls, functools.partial):
        official.GlobalRepresentationEncoder = functools.partial(encoder_cls, enc_embed_dim=OFFICIAL_VITS["embed_dim"])
    official.torch = _TorchZeroRand()
    official.tqdm = lambda iterable, *a, **k: iterable
    torch.manual_seed(seed)
    model = official.GemDepth(**OFFICIAL_VITS)
    for block in [*model.spatial_blocks, *model.time_blocks]:
        block.attn.dropout_p = 0.0
    return model.eval()


def reinit_(model: nn.Module, seed: int) -> None:
    """Re-draw every parameter so that each part of the network moves the output.

    The official initialisation (zero-initialised motion-module outputs, LayerScale 0.01, DPT
    convs that shrink the signal to an all-zero ReLU'd depth) would make a parity check blind to
    whole branches; this is the fixtures' 'parity' scheme: Linear/Conv weights N(0, 1/fan_in),
    biases N(0, 0.1²), norm weights 1 + N(0, 0.1²), LayerScale U(0.3, 1), pos_embed N(0, 0.5²),
    other tensors (tokens) N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def normal_(t: torch.Tensor, mean: float, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)
        done.add(id(t))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                w = module.weight
                fan_in = w.shape[1] * int(np.prod(w.shape[2:])) if not isinstance(module, nn.ConvTranspose2d) \
                    else w.shape[0]
                normal_(w, 0.0, fan_in ** -0.5)
                if module.bias is not None:
                    normal_(module.bias, 0.0, 0.1)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                normal_(module.weight, 1.0, 0.1)
                normal_(module.bias, 0.0, 0.1)
        for name, p in model.named_parameters():
            if id(p) in done:
                continue
            if name.endswith("gamma"):
                p.copy_(0.3 + 0.7 * torch.rand(p.shape, generator=gen))
            elif name.endswith("pos_embed"):
                normal_(p, 0.0, 0.5)
            else:
                normal_(p, 0.0, 1.0)


def calibrate_depth_bias_(model: nn.Module, video: torch.Tensor) -> float:
    """Shift the last depth conv's bias so ~90 % of the depth is > 0 after its ReLU; returns the shift.

    With random weights the depth is otherwise mostly clipped to 0 and a comparison would be blind.
    """
    conv = model.head.scratch.output_conv2[2]
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.detach().flatten().clone()))  # before the in-place ReLU
    try:
        with torch.inference_mode():
            model(video)
    finally:
        handle.remove()
    values = seen[0]
    shift = -torch.quantile(values[:: max(1, values.numel() // 1_000_000)], 0.1).item()
    with torch.no_grad():
        conv.bias.add_(shift)
    return shift


def save_state(model: nn.Module, folder: Path) -> Path:
    """``model.state_dict()`` as a safetensors file (official key names) in ``folder``."""
    from safetensors.torch import save_file

    path = folder / "official_vits.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------- measuring
def rel_diff(ours: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    """``max |ours - ref| / max |ref|`` (the fixtures' parity measure)."""
    a = torch.as_tensor(np.asarray(ours), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(ref), dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: ours {tuple(a.shape)}, official {tuple(b.shape)}")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def alternate(runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` rounds after ``warmup``; the order flips every round so
    that drifting machine load hits both sides alike."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            gc.collect()
            t0 = time.perf_counter()
            runs[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians per side, the ratio ours / official of the medians (< 1: ours is faster) and the
    median of the per-round ratios (robust to load that drifts between rounds)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["ours"], times["official"]))
    return {"seconds": times, "median_s": med, "ratio": med["ours"] / med["official"], "paired_ratio_median": paired}


def smooth_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 RGB: moving colour gradients with a little seeded texture."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    t = np.arange(n)[:, None, None, None]
    phase = np.stack([9 * xx, 7 * yy, 5 * (xx + yy)], -1)[None] + np.array([0.2, -0.15, 0.1]) * t
    texture = np.random.default_rng(seed).normal(0, 0.05, (1, height, width, 3))
    return np.clip(255 * (0.5 + 0.4 * np.sin(phase) + texture), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- profiling
@contextlib.contextmanager
def labelled(groups: dict[str, list[tuple[nn.Module, str]]]) -> Iterator[None]:
    """Wrap each ``(module, method)`` in ``record_function("part::<group>")`` while inside."""
    from torch.profiler import record_function

    patched: list[tuple[nn.Module, str]] = []
    try:
        for group, targets in groups.items():
            for module, method in targets:
                original = getattr(module, method)

                def wrapper(*a: Any, _f: Callable[..., Any] = original, _g: str = group, **k: Any) -> Any:
                    with record_function(f"part::{_g}"):
                        return _f(*a, **k)

                setattr(module, method, wrapper)
                patched.append((module, method))
        yield
    finally:
        for module, method in patched:
            delattr(module, method)  # the instance attribute; the class method shows again


def profile_once(fn: Callable[[], Any], groups: dict[str, list[tuple[nn.Module, str]]], top: int = 8
                 ) -> dict[str, Any]:
    """One profiled call of ``fn``: CPU ms per group (inclusive), the rest, and each group's top ops."""
    from torch.profiler import ProfilerActivity, profile

    with labelled(groups), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        total_ms = (time.perf_counter() - t0) * 1e3
    per_group: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def collect(event: Any, group: str) -> None:
        for child in event.cpu_children:
            if not child.name.startswith("part::"):
                ops[group][child.name] += child.self_cpu_time_total / 1e3
            collect(child, group)

    for event in prof.events():
        if event.name.startswith("part::") and not _has_part_parent(event):
            group = event.name[len("part::"):]
            per_group[group] += event.cpu_time_total / 1e3
            collect(event, group)
    parts = {g: {"ms": per_group.get(g, 0.0),
                 "top_ops_ms": dict(sorted(ops[g].items(), key=lambda kv: -kv[1])[:top])}
             for g in groups}
    parts["other"] = {"ms": max(0.0, total_ms - sum(per_group.values())), "top_ops_ms": {}}
    return {"total_ms": total_ms, "parts": parts}


def profile_sides(sides: dict[str, tuple[Callable[[], Any], dict[str, list[tuple[nn.Module, str]]]]],
                  repeats: int) -> dict[str, Any]:
    """``repeats`` profiled calls per side (alternating, after one warm-up each), merged: the median
    ms of each part and of the total, and each part's operators by median ms."""
    for fn, _ in sides.values():
        fn()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            runs[name].append(profile_once(*sides[name]))
    merged: dict[str, Any] = {}
    for name, profiles in runs.items():
        parts: dict[str, Any] = {}
        for part in profiles[0]["parts"]:
            op_names = {op for p in profiles for op in p["parts"][part]["top_ops_ms"]}
            op_ms = {op: statistics.median(p["parts"][part]["top_ops_ms"].get(op, 0.0) for p in profiles)
                     for op in op_names}
            parts[part] = {"ms": statistics.median(p["parts"][part]["ms"] for p in profiles),
                           "top_ops_ms": dict(sorted(op_ms.items(), key=lambda kv: -kv[1])[:5])}
        merged[name] = {"total_ms": statistics.median(p["total_ms"] for p in profiles), "parts": parts,
                        "runs": len(profiles)}
    return merged


def _has_part_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("part::"):
            return True
        parent = parent.cpu_parent
    return False


def official_groups(m: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """The official forward's parts; GEM's pose arithmetic between its modules, ASTT's norm and
    frame-index embedding and the final resize count as 'other'."""
    fwd = "forward"
    return {
        "encoder": [(m.pretrained, "get_intermediate_layers")],
        "gem": [(b, fwd) for b in [*m.frame_blocks, *m.global_blocks]]
        + [(x, fwd) for x in (m.camera_head, m.cam_rot_encoder, m.cam_trans_encoder, m.cam_trans_scale_encoder)],
        "astt_spatial": [(b, fwd) for b in m.spatial_blocks],
        "astt_time": [(b, fwd) for b in m.time_blocks],
        "head": [(m.head, fwd)],
    }


def our_groups(m: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Our forward's parts, matching :func:`official_groups` (ASTT's norm and embeddings: 'other')."""
    return {
        "encoder": [(m.encoder, "forward")],
        "gem": [(m.plugins["gem"], "forward")],
        "astt_spatial": [(b, "forward") for b in m.plugins["astt"].spatial_blocks],
        "astt_time": [(b, "forward") for b in m.plugins["astt"].time_blocks],
        "head": [(m.head, "forward")],
    }


# --------------------------------------------------------------------------- report
@dataclass
class Report:
    """Everything measured; ``to_json`` is what ``--json`` writes."""

    setup: dict[str, Any]
    parity: dict[str, Any] = field(default_factory=dict)
    forward: dict[str, Any] | None = None
    video: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, default=str)


def format_table(report: Report) -> str:
    """A plain-text table of the figures (medians, ratio ours/official, output differences)."""
    s = report.setup
    title = (f"gemdepth vs official GemDepth ({PRESET}), CPU, {s['threads']} threads, "
             f"our linear layers: {s.get('cpu_linear', '?')}, "
             f"load avg (1 min) {s['loadavg_start'][0]:.2f} -> {s.get('loadavg_end', [float('nan')])[0]:.2f}")
    lines = [title,
             f"{'what':<44}{'ours s':>9}{'official s':>12}{'ratio':>8}{'paired':>8}{'max rel diff':>14}"]
    if report.forward:
        f = report.forward
        lines.append(f"{'forward ' + f['shape'] + ' (median of ' + str(len(f['seconds']['ours'])) + ')':<44}"
                     f"{f['median_s']['ours']:>9.3f}{f['median_s']['official']:>12.3f}{f['ratio']:>7.2f}x"
                     f"{f['paired_ratio_median']:>7.2f}x"
                     f"{report.parity['depth_rel_diff']:>14.2e}")
    if report.video:
        v = report.video
        lines.append(f"{'video ' + v['what'] + ' (median of ' + str(len(v['seconds']['ours'])) + ')':<44}"
                     f"{v['median_s']['ours']:>9.2f}{v['median_s']['official']:>12.2f}{v['ratio']:>7.2f}x"
                     f"{v['paired_ratio_median']:>7.2f}x"
                     f"{v['depth_rel_diff']:>14.2e}")
    if report.profile:
        lines.append("")
        runs = report.profile["ours"]["runs"]
        lines.append(f"{f'CPU ms per part (median of {runs})':<30}{'ours':>10}{'official':>10}")
        ours, off = report.profile["ours"], report.profile["official"]
        for part in ours["parts"]:
            lines.append(f"{part:<30}{ours['parts'][part]['ms']:>10.0f}{off['parts'][part]['ms']:>10.0f}")
        lines.append(f"{'total':<30}{ours['total_ms']:>10.0f}{off['total_ms']:>10.0f}")
        for side, prof in (("ours", ours), ("official", off)):
            lines.append(f"top ops ({side}):")
            for part, entry in prof["parts"].items():
                if entry["top_ops_ms"]:
                    ops = ", ".join(f"{k} {v:.0f}" for k, v in entry["top_ops_ms"].items())
                    lines.append(f"  {part}: {ops}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _git_state() -> str:
    """``<HEAD commit>`` of this repository, ``+dirty`` when gemdepth/ has uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "gemdepth"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import gemdepth
    from gemdepth.models.cpu_linear import resolved_cpu_linear_backend, set_cpu_linear_backend

    if args.cpu_linear is not None:
        set_cpu_linear_backend(args.cpu_linear)

    official = import_official(args.official)
    report = Report(setup={
        "preset": PRESET, "official_constructor": OFFICIAL_VITS, "official_path": str(args.official),
        "official_patches": OFFICIAL_PATCHES, "threads": args.threads, "seed": args.seed,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gemdepth_git": _git_state(),
        "cpu_linear": resolved_cpu_linear_backend(),
    })

    # 1. the same weights on both sides
    off = build_official(official, args.seed)
    reinit_(off, args.seed)
    h, w = args.size
    video = torch.randn((1, args.frames, 3, h, w), generator=torch.Generator().manual_seed(1))
    report.setup["depth_bias_shift"] = calibrate_depth_bias_(off, video)
    with tempfile.TemporaryDirectory() as tmp:
        ours = gemdepth.load_model(save_state(off, Path(tmp)), config=PRESET)
    with torch.inference_mode():
        ref = off(video)[0]
        got = ours(video).depth
    report.parity = {"depth_rel_diff": rel_diff(got, ref), "positive_fraction": (ref > 0).float().mean().item(),
                     "tolerance": args.tolerance}
    print(f"parity: max|ours-official|/max|official| = {report.parity['depth_rel_diff']:.2e} "
          f"({100 * report.parity['positive_fraction']:.0f} % of the depth > 0)", flush=True)
    if not report.parity["depth_rel_diff"] <= args.tolerance:
        print(f"FAIL: the depths differ by more than {args.tolerance:g}; not timing different models",
              file=sys.stderr)
        return 1

    # 2. one forward each, alternating
    def run_ours() -> Any:
        with torch.inference_mode():
            return ours(video)

    def run_official() -> Any:
        with torch.inference_mode():
            return off(video)

    report.forward = {"shape": "x".join(map(str, video.shape)),
                      **summarize(alternate({"ours": run_ours, "official": run_official}, args.repeats))}
    print(f"forward: ours {report.forward['median_s']['ours']:.3f} s, official "
          f"{report.forward['median_s']['official']:.3f} s, ratio {report.forward['ratio']:.3f}", flush=True)

    # 3. where the time of one forward goes
    if args.profile:
        report.profile = profile_sides({"ours": (run_ours, our_groups(ours)),
                                        "official": (run_official, official_groups(off))}, args.profile_repeats)

    # 4. a whole video
    if args.video_frames:
        vh, vw = args.video_size
        frames = smooth_frames(args.video_frames, vh, vw, seed=args.seed)
        shapes: dict[str, tuple[int, ...]] = {}

        def watch(side: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
            def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
                shapes.setdefault(side, tuple(inputs[0].shape[-2:]))
            return hook

        # infer_video_depth calls self.forward directly: watch the encoders' inputs instead
        hooks = [off.pretrained.patch_embed.register_forward_pre_hook(watch("official")),
                 ours.encoder.register_forward_pre_hook(watch("ours"))]
        outputs: dict[str, np.ndarray] = {}

        def video_ours() -> None:
            results = gemdepth.infer_video(ours, list(frames), input_size=args.input_size, device="cpu")
            outputs["ours"] = np.stack([r.depth for r in results])

        def video_official() -> None:
            outputs["official"] = off.infer_video_depth(frames, 30, input_size=args.input_size, device="cpu",
                                                        fp32=True)[0]

        times = alternate({"ours": video_ours, "official": video_official}, args.video_repeats, warmup=0)
        for hook in hooks:
            hook.remove()
        if shapes["ours"] != shapes["official"]:
            raise RuntimeError(f"network inputs differ: ours {shapes['ours']}, official {shapes['official']}")
        report.video = {
            "what": f"{args.video_frames}x{vh}x{vw} -> net {shapes['ours'][0]}x{shapes['ours'][1]}",
            "input_size": args.input_size, **summarize(times),
            "depth_rel_diff": rel_diff(outputs["ours"], outputs["official"]),
            "depth_max_abs_diff": float(np.abs(outputs["ours"] - outputs["official"]).max()),
        }
        print(f"video: ours {report.video['median_s']['ours']:.2f} s, official "
              f"{report.video['median_s']['official']:.2f} s, ratio {report.video['ratio']:.3f}", flush=True)

    report.setup["loadavg_end"] = list(os.getloadavg())
    print(format_table(report))
    if args.json:
        from gemdepth.atomic import atomic_write_text

        atomic_write_text(args.json, report.to_json() + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
