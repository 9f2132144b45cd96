"""Evaluate a model on whole sequences under a protocol, with the paper's analyses as options.

:func:`evaluate_sequence` runs one sequence through the streaming windowed inference
(:func:`gemdepth.inference.infer_video`: the official 32-frame windows, 10-frame overlap, key
frames, scale/shift alignment and cross-fade), maps the prediction onto the scored ground-truth
region, and updates a metric collection, returning the sequence's own scores.

The analyses of the paper are settings of one call (:class:`AnalysisSetting`):

* ``pose_noise`` (Table 5): relative Gaussian noise ``σ·‖x‖·ε`` on the translations and
  quaternions GEM feeds to its pose encoders (the returned cameras stay clean);
* ``pose_prob`` (Table 9): probability that a window is given GEM's poses. ``0`` → never,
  ``1`` → always (deterministic); in between each window draws once (seeded). The paper's
  table compares models *trained* with these probabilities — evaluate each checkpoint for that;
  this knob varies it at test time;
* ``length`` (Table 10): evaluate only the first N frames of each sequence.

Random draws (pose noise, pose masks, the ``official_stochastic_inference`` quirk) are seeded
per sequence from ``seed`` and the sequence name, so results do not depend on the order in
which sequences (or DDP ranks) are processed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gemdepth.evaluation.protocol import Box, InferenceSettings, Protocol
from gemdepth.evaluation.report import format_table
from gemdepth.evaluation.sequence import prepare_sequence

__all__ = [
    "AnalysisSetting",
    "analysis_settings",
    "evaluate_sequence",
    "predict_sequence",
    "map_to_ground_truth",
    "model_knobs",
    "truncate_sample",
    "format_table",
]

log = logging.getLogger("gemdepth.evaluation")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class AnalysisSetting:
    """One row of an analysis: GEM pose noise (Table 5), pose-feeding probability (Table 9),
    sequence length (Table 10). The default is the plain benchmark."""

    pose_noise: float = 0.0
    pose_prob: float | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if not (self.pose_noise >= 0 and math.isfinite(self.pose_noise)):
            raise ValueError(f"pose_noise must be a finite level >= 0, got {self.pose_noise}")
        if self.pose_prob is not None and not 0.0 <= self.pose_prob <= 1.0:
            raise ValueError(f"pose_prob must be in [0, 1] or None, got {self.pose_prob}")
        if self.length is not None and self.length < 1:
            raise ValueError(f"length must be >= 1 or None, got {self.length}")

    @property
    def is_default(self) -> bool:
        return self == AnalysisSetting()

    def label(self) -> str:
        """``""`` for the plain benchmark, else e.g. ``noise 5% · pose prob 50% · 200 frames``."""
        parts = []
        if self.pose_noise:
            parts.append(f"noise {self.pose_noise * 100:g}%")
        if self.pose_prob is not None:
            parts.append(f"pose prob {self.pose_prob * 100:g}%")
        if self.length is not None:
            parts.append(f"{self.length} frames")
        return " · ".join(parts)

    def key(self) -> str:
        """A metric-key-safe name (``base``, ``noise0.05``, ``noise0.05_prob0.5_len200``)."""
        parts = []
        if self.pose_noise:
            parts.append(f"noise{self.pose_noise:g}")
        if self.pose_prob is not None:
            parts.append(f"prob{self.pose_prob:g}")
        if self.length is not None:
            parts.append(f"len{self.length}")
        return "_".join(parts) or "base"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def analysis_settings(
    pose_noise: Sequence[float] | None = None,
    pose_prob: Sequence[float | None] | None = None,
    lengths: Sequence[int | None] | None = None,
) -> list[AnalysisSetting]:
    """Every combination of the given levels (one row each); ``None``/empty lists → default."""
    noises = list(pose_noise) if pose_noise else [0.0]
    probs = list(pose_prob) if pose_prob else [None]
    lens = list(lengths) if lengths else [None]
    out = [AnalysisSetting(float(n), None if p is None else float(p), None if n_ is None else int(n_))
           for n, p, n_ in itertools.product(noises, probs, lens)]
    if len(set(out)) != len(out):
        raise ValueError(f"analysis levels repeat: pose_noise={noises}, pose_prob={probs}, lengths={lens}")
    return out


# ----------------------------------------------------------------------------- model knobs
def _plugins(model: nn.Module, kind: str) -> list[nn.Module]:
    if kind == "gem":
        from gemdepth.models.plugins.gem import GEM as cls
    else:
        from gemdepth.models.plugins.astt import ASTT as cls
    return [m for m in model.modules() if isinstance(m, cls)]


_GEM_FIELDS = ("pose_noise", "pose_noise_seed", "eval_feed_pose", "stochastic_inference",
               "pose_prob", "pose_clip_prob", "pose_frame_prob")


def sequence_seed(seed: int, name: str) -> int:
    """A per-sequence seed independent of processing order."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)


@contextlib.contextmanager
def model_knobs(
    model: nn.Module,
    *,
    pose_noise: float = 0.0,
    pose_prob: float | None = None,
    stochastic: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[None]:
    """Temporarily set GEM's pose noise / pose feeding (and the official stochastic inference)
    and seed the random draws; everything is restored on exit.

    Raises ``ValueError`` when an option needs GEM (or ASTT) and the model has none.
    """
    gems = _plugins(model, "gem")
    astts = _plugins(model, "astt") if stochastic else []
    if (pose_noise or pose_prob is not None) and not gems:
        raise ValueError("pose_noise / pose_prob act on GEM's poses, but the model has no GEM plug-in; "
                         "evaluate a GemDepth model or drop these options")
    saved = [{f: getattr(g, f) for f in _GEM_FIELDS} for g in gems]
    saved_astt = [a.stochastic_inference for a in astts]
    dev = torch.device(device) if device is not None else None
    fork_devices = [dev] if dev is not None and dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for g in gems:
                g.pose_noise = float(pose_noise)
                g.pose_noise_seed = seed
                g.reset_noise()
                if stochastic:  # the official forward: the model's own masks, drawn in eval
                    g.stochastic_inference = True
                    if pose_prob is not None:
                        g.pose_prob = float(pose_prob)
                elif pose_prob is not None:
                    if pose_prob in (0.0, 1.0):
                        g.stochastic_inference = False
                        g.eval_feed_pose = pose_prob == 1.0
                    else:  # one draw per window: clip and frame masks always pass
                        g.stochastic_inference = True
                        g.pose_prob, g.pose_clip_prob, g.pose_frame_prob = float(pose_prob), 1.0, 1.0
            for a in astts:
                a.stochastic_inference = True
            yield
    finally:
        for g, values in zip(gems, saved):
            for f, v in values.items():
                setattr(g, f, v)
            g.reset_noise()
        for a, v in zip(astts, saved_astt):
            a.stochastic_inference = v


# ----------------------------------------------------------------------------- inference
def _numpy_frames(rgb: Any) -> np.ndarray:
    if isinstance(rgb, Tensor):
        rgb = rgb.detach().cpu().numpy()
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"sequence rgb must be uint8 (T, H, W, 3), got {rgb.dtype} {rgb.shape}")
    return rgb


def predict_sequence(
    model: nn.Module,
    rgb: Any,
    settings: InferenceSettings,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Windowed inference over uint8 frames ``(T, H, W, 3)``.

    Returns depth ``(T, H, W)`` float32 (relative disparity aligned across windows, CPU) and,
    when the model predicts cameras, extrinsics ``(T, 4, 4)`` and intrinsics ``(T, 3, 3)``
    (frame pixels) — else ``None``.
    """
    from gemdepth.inference import infer_video

    frames = _numpy_frames(rgb)
    t, h, w = frames.shape[:3]
    depth = torch.empty((t, h, w), dtype=torch.float32)
    extr: list[np.ndarray | None] = [None] * t
    intr: list[np.ndarray | None] = [None] * t
    seen = 0
    stream = infer_video(
        model, (frames[i] for i in range(t)), input_size=settings.input_size, window=settings.window,
        overlap=settings.overlap, keyframes=settings.keyframes, interp=settings.interp, device=device,
        dtype=settings.dtype, chain_cameras=settings.chain_cameras,
    )
    for result in stream:
        depth[result.index] = torch.from_numpy(result.depth)
        extr[result.index], intr[result.index] = result.extrinsics, result.intrinsics
        seen += 1
    if seen != t:
        raise RuntimeError(f"windowed inference returned {seen} frames for a {t}-frame sequence")
    if any(e is None for e in extr) or any(k is None for k in intr):
        return depth, None, None
    return depth, torch.from_numpy(np.stack(extr)).float(), torch.from_numpy(np.stack(intr)).float()


def map_to_ground_truth(
    pred: Tensor,
    pred_intrinsics: Tensor | None,
    input_box: Sequence[int],
    gt_box: Sequence[int],
) -> tuple[Tensor, Tensor | None]:
    """Bring a prediction over ``input_box`` onto ``gt_box`` (both ``[top, left, h, w]`` in
    source pixels): identical boxes pass through, a contained box is cropped (intrinsics
    shifted), any other is bilinearly resized (half-pixel centres, no antialias, as
    ``cv2.resize``; intrinsics scaled) — the reference's KITTI behaviour."""
    src, dst = Box(*input_box), Box(*gt_box)
    if src == dst:
        return pred, pred_intrinsics
    if dst.within(src):
        rel = dst.relative_to(src)
        rows, cols = rel.slices
        pred = pred[:, rows, cols]
        if pred_intrinsics is not None:
            pred_intrinsics = pred_intrinsics.clone()
            pred_intrinsics[:, 0, 2] -= rel.left
            pred_intrinsics[:, 1, 2] -= rel.top
        return pred, pred_intrinsics
    resized = F.interpolate(pred[:, None], size=dst.shape, mode="bilinear", align_corners=False)[:, 0]
    if pred_intrinsics is not None:
        sx, sy = dst.width / src.width, dst.height / src.height
        pred_intrinsics = pred_intrinsics.clone()
        pred_intrinsics[:, 0, 0] *= sx
        pred_intrinsics[:, 0, 2] = (pred_intrinsics[:, 0, 2] + 0.5) * sx - 0.5
        pred_intrinsics[:, 1, 1] *= sy
        pred_intrinsics[:, 1, 2] = (pred_intrinsics[:, 1, 2] + 0.5) * sy - 0.5
    return resized, pred_intrinsics


def truncate_sample(sample: Mapping[str, Any], length: int | None) -> dict[str, Any]:
    """The first ``length`` frames of a prepared sample (a length-sweep row)."""
    out = dict(sample)
    if length is None:
        return out
    requested = sample.get("requested_frames")
    out["requested_frames"] = length if requested is None else min(int(requested), length)
    if length >= int(sample["frames"]):
        return out
    for key in ("rgb", "depth", "valid", "intrinsics", "extrinsics"):
        if out.get(key) is not None:
            out[key] = out[key][:length]
    out["frame_indices"] = list(sample["frame_indices"])[:length]
    out["frames"] = length
    return out


def _tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor | None:
    if x is None:
        return None
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    t = t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
    return t.clone() if t.is_inference() else t


def _metrics_device(metrics: Any) -> torch.device:
    for m in metrics.values():
        return m.device
    return torch.device("cpu")


def _model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate_sequence(
    model: nn.Module,
    sequence: Mapping[str, Any],
    protocol: Protocol,
    *,
    pose_noise: float = 0.0,
    pose_prob: float | None = None,
    length: int | None = None,
    device: torch.device | str | None = None,
    metrics: Any | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate one sequence; update ``metrics`` (a :class:`gemdepth.metrics.SequenceMetrics`
    built by ``protocol.build_metrics()``; a fresh one when ``None``) and return its scores.

    Args:
        model: a :class:`gemdepth.models.VideoDepthModel` (eval mode).
        sequence: a prepared sample (:func:`gemdepth.evaluation.sequence.prepare_sequence`,
            also what :class:`~gemdepth.evaluation.datamodule.EvalDataModule` yields) or a raw
            sequence dict of :func:`gemdepth.data.read_sequences` (prepared here).
        protocol: the protocol (inference settings, crop, quirks, metrics).
        pose_noise, pose_prob, length: an :class:`AnalysisSetting`.
        device: inference device (default: the model's).
        metrics: the collection to update (its device is where the scoring runs).
        seed: base seed of the random draws.

    Returns:
        ``{"name", "frames", "requested_frames", "short", "seconds", "fps", "metrics",
        "setting"}`` with this sequence's metric values (NaN when it could not be scored).
    """
    setting = AnalysisSetting(pose_noise, pose_prob, length)
    sample = sequence if "gt_box" in sequence else prepare_sequence(sequence, protocol)
    sample = truncate_sample(sample, length)
    name = str(sample["name"])
    if protocol.needs_cameras and sample.get("extrinsics") is None:
        raise ValueError(f"sequence {name!r}: protocol {protocol.name!r} scores {', '.join(protocol.metrics)}, "
                         "which need ground-truth poses, but the sequence has none")
    if metrics is None:
        metrics = protocol.build_metrics()
    dev = torch.device(device) if device is not None else _model_device(model)
    seq_seed = sequence_seed(seed, name)
    mdev = _metrics_device(metrics)
    # the protocol's precision rules, not a surrounding autocast (e.g. a Trainer's bf16-mixed):
    # infer_video re-enables autocast itself for precision 16/bf16
    with _no_autocast(dev), _no_autocast(mdev):
        return _evaluate(model, sample, protocol, setting, dev, mdev, metrics, seq_seed)


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _evaluate(model: nn.Module, sample: Mapping[str, Any], protocol: Protocol, setting: AnalysisSetting,
              dev: torch.device, mdev: torch.device, metrics: Any, seq_seed: int) -> dict[str, Any]:
    name = str(sample["name"])
    with model_knobs(model, pose_noise=setting.pose_noise, pose_prob=setting.pose_prob,
                     stochastic=protocol.quirk("official_stochastic_inference"), seed=seq_seed, device=dev):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        pred, pred_extr, pred_intr = predict_sequence(model, sample["rgb"], protocol.inference, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    if protocol.needs_predicted_cameras and pred_extr is None:
        raise ValueError(f"protocol {protocol.name!r} scores ATE/F1, which need predicted cameras, but the model "
                         "predicts none (no GEM plug-in)")
    pred, pred_intr = map_to_ground_truth(pred, pred_intr, sample["input_box"], sample["gt_box"])
    with torch.inference_mode(False):
        kwargs: dict[str, Any] = {
            "pred": _tensor(pred, mdev, torch.float32),
            "gt_depth": _tensor(sample["depth"], mdev, torch.float32),
            "valid": _tensor(sample.get("valid"), mdev, torch.bool),
            "name": name,
        }
        if protocol.needs_cameras:
            kwargs["intrinsics"] = _tensor(sample["intrinsics"], mdev, torch.float32)
            kwargs["extrinsics"] = _tensor(sample["extrinsics"], mdev, torch.float32)
        if protocol.needs_predicted_cameras:
            kwargs["pred_extrinsics"] = _tensor(pred_extr, mdev, torch.float32)
            kwargs["pred_intrinsics"] = _tensor(pred_intr, mdev, torch.float32)
        values = metrics(**kwargs)
    frames = int(sample["frames"])
    requested = sample.get("requested_frames")
    return {
        "name": name,
        "frames": frames,
        "requested_frames": None if requested is None else int(requested),
        "short": requested is not None and frames < int(requested),
        "seconds": round(seconds, 4),
        "fps": round(frames / seconds, 3) if seconds > 0 else None,
        "metrics": {k: float(v) for k, v in values.items()},
        "setting": setting.as_dict(),
    }
