"""The benchmark protocols behind the paper's tables (Video Depth Anything benchmark, as GemDepth).

A :class:`Protocol` says everything that turns a converted evaluation corpus into published
numbers: which sequences, which frames (start/stop/step, by stored position or by source frame
index, the frame cap), the crop, the depth range, the alignment, the metrics, the inference
settings (input size, the official 32-frame windows with a 10-frame overlap, key frames,
scale/shift alignment and cross-fade of :func:`gemdepth.inference.infer_video`) and which
*reference quirks* to reproduce.

Reference quirks are behaviours of the published evaluation code that change its numbers but
are not what the protocol means. The correct behaviour is the default; each quirk is a named
flag (:data:`QUIRKS`, listed with one line each in ``docs/eval_protocol.md``) that restores the
reference behaviour so published numbers can be reproduced. ``reference_quirks: [all]`` turns
on every quirk that applies to the protocol's dataset.

:data:`PROTOCOLS` holds the presets (``sintel``, ``kitti``, ``kitti_500``, ``bonn``,
``bonn_500``, ``scannet``, ``scannet_500``, ``scannet_tae``); ``configs/eval/<name>.yaml``
carry the same numbers for ``gemdepth test`` (a test checks that they agree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Box",
    "Crop",
    "FrameSampling",
    "InferenceSettings",
    "Protocol",
    "Quirk",
    "QUIRKS",
    "PROTOCOLS",
    "get_protocol",
    "protocol_names",
    "quirk_lines",
]

SamplingBy = Literal["position", "index"]
Precision = Literal["32", "16", "bf16"]


# ----------------------------------------------------------------------------- quirks
@dataclass(frozen=True)
class Quirk:
    """One reference behaviour that changes published numbers.

    ``datasets``: the datasets it applies to (empty: any). ``source``: where it comes from.
    ``summary``: one line for the README.
    """

    name: str
    summary: str
    source: str
    datasets: tuple[str, ...] = ()


QUIRKS: dict[str, Quirk] = {
    q.name: q
    for q in (
        Quirk(
            "sintel_uint16_depth",
            "Sintel ground truth is cast to uint16 (truncated to whole metres; depth < 1 m becomes invalid, "
            "values past 65535 wrap) as both extraction scripts store it.",
            "VDA/GemDepth dataset_extract_sintel.py: cv2.imwrite(depth.astype(np.uint16))",
            ("sintel",),
        ),
        Quirk(
            "sintel_depth_factor_650",
            "Sintel ground truth is additionally divided by 65535/650 (the VDA json factor; GemDepth uses 1), "
            "so the 70 m cap acts at ~7056 m; implies sintel_uint16_depth.",
            "VDA eval_utils.gen_json factor for sintel",
            ("sintel",),
        ),
        Quirk(
            "kitti_even_crop_resize",
            "KITTI: the image is cropped to even height/width only, the ground truth to rows 0:374 and columns "
            "0:1242, and the prediction is bilinearly resized to the ground truth (differs on 376x1241 drives).",
            "VDA eval_utils.copy_crop_files (even crop) + eval.py get_infer (cv2.resize to the GT crop)",
            ("kitti",),
        ),
        Quirk(
            "tae_uncropped_intrinsics",
            "TAE: the intrinsics of the uncropped frame are used for the cropped maps (principal point not "
            "shifted by the 8/11 px ScanNet crop).",
            "VDA eval_tae.py: K from intrinsic_depth.txt used after hard_crop",
        ),
        Quirk(
            "tae_last_write_wins",
            "TAE: where projected points collide the last one written wins and points behind the camera are "
            "kept (no z-buffer, no z > 0 test).",
            "VDA eval_tae.py tae_torch: depth_proj[y, x] = z",
        ),
        Quirk(
            "tae_empty_as_zero",
            "TAE: a direction with no comparable pixel counts as error 0 and still enters the 2(T-1) mean.",
            "VDA eval_tae.py tae_torch: return 0",
        ),
        Quirk(
            "tae_shared_intrinsics",
            "TAE: frame k's intrinsics are used for both directions of the pair (k, k+1).",
            "VDA eval_tae.py: K = Ks_cur[i] for error1 and error2",
        ),
        Quirk(
            "official_stochastic_inference",
            "GemDepth inference draws GEM's pose-feeding masks at random (clip 0.9, frame 0.95, camera 0.5) and "
            "keeps ASTT's attention dropout (0.1), as the official forward does in eval mode.",
            "GemDepth model/gemdepth.py forward (torch.rand masks, dropout_p in eval)",
        ),
    )
}
ALL_QUIRKS = "all"


def quirk_lines() -> list[str]:
    """One Markdown bullet per quirk (for the README and ``docs/eval_protocol.md``)."""
    lines = []
    for q in QUIRKS.values():
        scope = f" [{', '.join(q.datasets)}]" if q.datasets else ""
        lines.append(f"- `{q.name}`{scope}: {q.summary} (reference: {q.source})")
    return lines


# ----------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class Box:
    """A pixel rectangle of a frame: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def within(self, other: Box) -> bool:
        """Whether this box lies inside ``other``."""
        return (other.top <= self.top and other.left <= self.left
                and self.top + self.height <= other.top + other.height
                and self.left + self.width <= other.left + other.width)

    def relative_to(self, other: Box) -> Box:
        """This box in the coordinates of ``other`` (which must contain it)."""
        return Box(self.top - other.top, self.left - other.left, self.height, self.width)

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width]


@dataclass(frozen=True)
class Crop:
    """A crop as Python slice bounds ``[top:bottom, left:right]`` (negative = from the end,
    ``None`` = to the edge), e.g. ScanNet's ``[8:-8, 11:-11]``; bounds past the frame are clipped
    to it, as NumPy slicing does."""

    top: int = 0
    bottom: int | None = None
    left: int = 0
    right: int | None = None

    @classmethod
    def from_list(cls, values: Sequence[int | None] | None) -> Crop | None:
        """``[top, bottom, left, right]`` → :class:`Crop` (``None`` → no crop)."""
        if values is None:
            return None
        if len(values) != 4:
            raise ValueError(f"crop must be [top, bottom, left, right] (Python slice bounds), got {list(values)}")
        top, bottom, left, right = values
        return cls(int(top or 0), None if bottom is None else int(bottom), int(left or 0),
                   None if right is None else int(right))

    def as_list(self) -> list[int | None]:
        return [self.top, self.bottom, self.left, self.right]

    def box(self, height: int, width: int) -> Box:
        """The crop on a ``height × width`` frame; raises when it leaves no pixel."""
        rows = range(height)[self.top : self.bottom]
        cols = range(width)[self.left : self.right]
        if len(rows) == 0 or len(cols) == 0:
            raise ValueError(f"crop {self.as_list()} leaves no pixel of a {height}x{width} frame")
        return Box(rows.start, cols.start, len(rows), len(cols))


# ----------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a stored sequence are evaluated.

    ``by="position"``: ``frames[start:stop:step]`` of the sequence as stored (the reference
    slices its sorted file list). ``by="index"``: frames whose source frame index ``i``
    (``meta["frame_indices"]``: file numbers, rows of ``rgb.txt``) has ``start <= i < stop``
    and ``(i - start) % step == 0`` — robust to frames a converter dropped. Then at most
    ``max_frames`` frames are kept (the reference's ``max_eval_len``).
    """

    start: int = 0
    stop: int | None = None
    step: int = 1
    by: SamplingBy = "position"
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ValueError(f"frame step must be >= 1, got {self.step}")
        if self.start < 0 or (self.stop is not None and self.stop < 0):
            raise ValueError(f"frame start/stop must be >= 0 (got {self.start}, {self.stop})")
        if self.by not in ("position", "index"):
            raise ValueError(f"frame sampling 'by' must be 'position' or 'index', got {self.by!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {self.max_frames}")

    @property
    def requested(self) -> int | None:
        """How many frames the protocol asks for (``None``: all there are)."""
        span = None if self.stop is None else len(range(self.start, self.stop, self.step))
        if span is None:
            return self.max_frames
        return span if self.max_frames is None else min(span, self.max_frames)

    def select(self, frame_indices: Sequence[int], limit: int | None = None) -> np.ndarray:
        """Positions (into the stored sequence) of the evaluated frames, in order.

        ``limit`` further caps the count (a length sweep's length).
        """
        idx = np.asarray(frame_indices, dtype=np.int64)
        if self.by == "position":
            pos = np.arange(len(idx))[self.start : self.stop : self.step]
        else:
            keep = idx >= self.start
            if self.stop is not None:
                keep &= idx < self.stop
            keep &= (idx - self.start) % self.step == 0
            pos = np.nonzero(keep)[0]
        for cap in (self.max_frames, limit):
            if cap is not None:
                pos = pos[:cap]
        return pos


# ----------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class InferenceSettings:
    """Settings of :func:`gemdepth.inference.infer_video` (official benchmark: 518 px input,
    32-frame windows, 10-frame overlap, 8-frame cross-fade, the official key frames, fp32)."""

    input_size: int = 518
    window: int = 32
    overlap: int = 10
    interp: int = 8
    keyframes: tuple[int, ...] | None = None
    precision: Precision = "32"
    chain_cameras: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("32", "16", "bf16"):
            raise ValueError(f"precision must be '32', '16' or 'bf16', got {self.precision!r}")
        if self.keyframes is not None:
            object.__setattr__(self, "keyframes", tuple(int(k) for k in self.keyframes))

    @property
    def dtype(self) -> Any:
        import torch

        return {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}[self.precision]


# ----------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """One benchmark protocol (see the module docstring).

    Attributes:
        name: protocol name (``bonn_500``), used for result files and table columns.
        dataset: corpus name the shards must carry (``meta["corpus"]``).
        max_depth / min_depth: valid ground truth is ``min_depth < gt < max_depth``; the
            aligned prediction is clipped to ``max_depth``.
        crop: region of the frame that is scored (``None``: whole frame). Intrinsics are
            shifted to it.
        crop_input: ``True``: the model sees the cropped frame (the reference extracts cropped
            images); ``False``: it sees the whole frame and its prediction is cropped after
            inference (the reference's ScanNet TAE ``--hard_crop``).
        sampling: frames per sequence (:class:`FrameSampling`).
        sequences: explicit sequence names (``None``: all), in this order.
        max_sequences: keep the first N sequences in sorted-name order (``None``: all).
        alignment: metric alignment mode (``disparity_lstsq`` is the protocol's).
        metrics: names for :func:`gemdepth.metrics.build_metrics`.
        metric_options: extra options for it (plain or per metric, e.g. ``{"TAE": {...}}``).
        inference: :class:`InferenceSettings`.
        reference_quirks: names from :data:`QUIRKS` (or ``all``) to reproduce.
        expect_meta: ``meta`` values the shards must carry (e.g. Sintel's ``pass: clean``).
    """

    name: str
    dataset: str
    max_depth: float
    min_depth: float = 1e-3
    crop: Crop | None = None
    crop_input: bool = True
    sampling: FrameSampling = field(default_factory=FrameSampling)
    sequences: tuple[str, ...] | None = None
    max_sequences: int | None = None
    alignment: str = "disparity_lstsq"
    metrics: tuple[str, ...] = ("AbsRel", "Delta1")
    metric_options: Mapping[str, Any] = field(default_factory=dict)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    reference_quirks: tuple[str, ...] = ()
    expect_meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.dataset:
            raise ValueError("a protocol needs a name and a dataset")
        if not self.max_depth > self.min_depth:
            raise ValueError(f"protocol {self.name}: max_depth ({self.max_depth}) must exceed "
                             f"min_depth ({self.min_depth})")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"protocol {self.name}: max_sequences must be >= 1 or None, got {self.max_sequences}")
        if not self.metrics:
            raise ValueError(f"protocol {self.name}: list at least one metric")
        if self.sequences is not None:
            object.__setattr__(self, "sequences", tuple(str(s) for s in self.sequences))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "reference_quirks", self._expand_quirks(self.reference_quirks))

    def _expand_quirks(self, names: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        for name in names:
            if name == ALL_QUIRKS:
                out += [q.name for q in QUIRKS.values() if not q.datasets or self.dataset in q.datasets]
                continue
            if name not in QUIRKS:
                raise ValueError(f"protocol {self.name}: unknown reference quirk {name!r}; "
                                 f"known: {', '.join(QUIRKS)} (or 'all')")
            quirk = QUIRKS[name]
            if quirk.datasets and self.dataset not in quirk.datasets:
                raise ValueError(f"protocol {self.name}: quirk {name!r} applies to {', '.join(quirk.datasets)} "
                                 f"only, not to dataset {self.dataset!r}")
            out.append(name)
        if "sintel_depth_factor_650" in out and "sintel_uint16_depth" not in out:
            out.append("sintel_uint16_depth")
        return tuple(dict.fromkeys(out))

    # ------------------------------------------------------------------ queries
    def quirk(self, name: str) -> bool:
        """Whether reference quirk ``name`` is on (unknown names raise)."""
        if name not in QUIRKS:
            raise KeyError(f"unknown reference quirk {name!r}; known: {', '.join(QUIRKS)}")
        return name in self.reference_quirks

    def replace(self, **changes: Any) -> Protocol:
        """A copy with fields changed (``sampling``/``inference`` accept dicts of their fields)."""
        for key in ("sampling", "inference"):
            if isinstance(changes.get(key), Mapping):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        if isinstance(changes.get("crop"), (list, tuple)):
            changes["crop"] = Crop.from_list(changes["crop"])
        return dataclasses.replace(self, **changes)

    def metric_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`gemdepth.metrics.build_metrics` (quirk flags applied)."""
        from gemdepth.metrics import canonical_metric_name

        opts: dict[str, Any] = {"alignment": self.alignment, "max_depth": float(self.max_depth),
                                "min_depth": float(self.min_depth)}
        names = {canonical_metric_name(m) for m in self.metrics}
        for key, value in self.metric_options.items():
            try:
                canon = canonical_metric_name(key)
            except KeyError:
                opts[key] = value
                continue
            opts[canon] = dict(value)
        if "TAE" in names:
            tae = dict(opts.get("TAE", {}))
            for quirk, option, value in (("tae_last_write_wins", "zbuffer", False),
                                         ("tae_empty_as_zero", "empty_as_zero", True),
                                         ("tae_shared_intrinsics", "shared_intrinsics", True)):
                if self.quirk(quirk):
                    tae[option] = value
            if tae:
                opts["TAE"] = tae
        return opts

    def build_metrics(self) -> Any:
        """A fresh :class:`gemdepth.metrics.SequenceMetrics` collection for this protocol.

        Plain options go to the metrics that take them (``ATE`` takes no depth options);
        per-metric option dicts of metrics the protocol does not list are dropped.
        """
        import inspect

        from gemdepth.metrics import METRICS, build_metrics, canonical_metric_name

        names = [canonical_metric_name(m) for m in self.metrics]
        accepted: set[str] = set()
        for n in names:
            accepted |= set(inspect.signature(METRICS[n].__init__).parameters)
        kwargs = {}
        for key, value in self.metric_kwargs().items():
            if _is_metric_name(key):
                if canonical_metric_name(key) in names:
                    kwargs[key] = value
            elif key in accepted:
                kwargs[key] = value
        return build_metrics(names, **kwargs)

    @property
    def needs_cameras(self) -> bool:
        """Whether a metric needs ground-truth poses (TAE, TCD, ATE, F1)."""
        from gemdepth.metrics import canonical_metric_name

        return any(canonical_metric_name(m) in ("TAE", "TCD", "ATE", "F1Score") for m in self.metrics)

    @property
    def needs_predicted_cameras(self) -> bool:
        """Whether a metric needs the model's predicted cameras (ATE, F1)."""
        from gemdepth.metrics import canonical_metric_name

        return any(canonical_metric_name(m) in ("ATE", "F1Score") for m in self.metrics)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of :meth:`from_dict`)."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "max_depth": self.max_depth,
            "min_depth": self.min_depth,
            "crop": None if self.crop is None else self.crop.as_list(),
            "crop_input": self.crop_input,
            "sampling": dataclasses.asdict(self.sampling),
            "sequences": None if self.sequences is None else list(self.sequences),
            "max_sequences": self.max_sequences,
            "alignment": self.alignment,
            "metrics": list(self.metrics),
            "metric_options": _plain(self.metric_options),
            "inference": {**dataclasses.asdict(self.inference),
                          "keyframes": None if self.inference.keyframes is None else list(self.inference.keyframes)},
            "reference_quirks": list(self.reference_quirks),
            "expect_meta": _plain(self.expect_meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown protocol field(s) {sorted(unknown)}")
        if "crop" in data and not isinstance(data["crop"], Crop):
            data["crop"] = Crop.from_list(data["crop"])
        if isinstance(data.get("sampling"), Mapping):
            data["sampling"] = FrameSampling(**data["sampling"])
        if isinstance(data.get("inference"), Mapping):
            data["inference"] = InferenceSettings(**data["inference"])
        for key in ("metrics", "reference_quirks"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _is_metric_name(key: str) -> bool:
    from gemdepth.metrics import canonical_metric_name

    try:
        canonical_metric_name(key)
    except KeyError:
        return False
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- presets
def _preset(**kw: Any) -> Protocol:
    return Protocol(**kw)


#: ScanNet crop of the protocol (DepthCrafter's), rows 8:-8, columns 11:-11 of 640x480.
SCANNET_CROP = Crop(8, -8, 11, -11)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        # Sintel (clean pass, all training sequences, ~50 frames each; paper Table 1 "~50 frames").
        _preset(name="sintel", dataset="sintel", max_depth=70.0, crop=Crop(0, 436, 0, 1024),
                sampling=FrameSampling(0, 100, 1, "position", 100), expect_meta={"pass": "clean"}),
        # KITTI depth-prediction val drives, first 110 / 500 annotated frames.
        _preset(name="kitti", dataset="kitti", max_depth=80.0, crop=Crop(0, 374, 0, 1242),
                sampling=FrameSampling(0, 110, 1, "position", 110)),
        _preset(name="kitti_500", dataset="kitti", max_depth=80.0, crop=Crop(0, 374, 0, 1242),
                sampling=FrameSampling(0, 500, 1, "position", 500)),
        # Bonn RGB-D Dynamic: rgb rows 30..139 (DepthCrafter's 110 frames) / 0..499.
        _preset(name="bonn", dataset="bonn", max_depth=10.0, crop=Crop(0, 480, 0, 640),
                sampling=FrameSampling(30, 140, 1, "index", 110)),
        _preset(name="bonn_500", dataset="bonn", max_depth=10.0, crop=Crop(0, 480, 0, 640),
                sampling=FrameSampling(0, 500, 1, "index", 500)),
        # ScanNet: first 100 scenes (sorted); 90 frames (every 3rd of 0..269) / frames 0..499.
        _preset(name="scannet", dataset="scannet", max_depth=10.0, crop=SCANNET_CROP,
                sampling=FrameSampling(0, 270, 3, "index", 90), max_sequences=100),
        _preset(name="scannet_500", dataset="scannet", max_depth=10.0, crop=SCANNET_CROP,
                sampling=FrameSampling(0, 500, 1, "index", 500), max_sequences=100),
        # ScanNet TAE (paper Table 2): first 20 scenes, frames 10..179, inference on the whole
        # 640x480 frame, prediction and ground truth cropped afterwards (eval_tae.sh --hard_crop).
        _preset(name="scannet_tae", dataset="scannet", max_depth=10.0, crop=SCANNET_CROP, crop_input=False,
                sampling=FrameSampling(10, 180, 1, "index", 170), max_sequences=20, metrics=("TAE",)),
    )
}


def protocol_names() -> list[str]:
    return list(PROTOCOLS)


def get_protocol(name: str, **changes: Any) -> Protocol:
    """A preset protocol by name, optionally with fields changed (see :meth:`Protocol.replace`)."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    return proto.replace(**changes) if changes else proto
