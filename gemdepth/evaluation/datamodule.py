"""``EvalDataModule``: converted evaluation shards → one whole, protocol-prepared sequence per batch.

Its arguments are the protocol's fields, flat and typed so that ``configs/eval/<name>.yaml``
spells out the benchmark's numbers and LightningCLI can override any of them
(``--data.max_frames 100``), plus the paper's analyses (``pose_noise``, ``pose_prob``,
``lengths``) and where to write the results. ``gemdepth test --ckpt CKPT -c
configs/eval/bonn_500.yaml`` puts it in place of the training DataModule; the task hands every
batch to :mod:`gemdepth.evaluation.lightning`.

Sequences are planned from the corpus's ``index.json`` (only shards holding a selected sequence
are read), split over DDP ranks and DataLoader workers by name (each sequence on exactly one
of them), read with :func:`gemdepth.data.read_sequences` and cut to the protocol's frames and
crop (:func:`gemdepth.evaluation.sequence.prepare_sequence`). A batch is that sample dict
(``rgb`` uint8 ``(T, h, w, 3)``, ``depth`` ``(T, H, W)`` metres, ``valid``, ``intrinsics``,
``extrinsics`` or ``None``, ``name``, boxes and frame counts); it stays on the CPU (the runner
moves what it needs). Sequences with fewer frames than the protocol asks for are evaluated
with what they have, logged, and counted in the results.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gemdepth.data.remote import display
from gemdepth.evaluation.protocol import Crop, FrameSampling, InferenceSettings, Protocol, get_protocol
from gemdepth.evaluation.runner import AnalysisSetting, analysis_settings
from gemdepth.evaluation.sequence import prepare_sequence

__all__ = ["EvalDataModule", "SequenceDataset", "plan_sequences"]

log = logging.getLogger("gemdepth.evaluation")


def plan_sequences(path: str | Path, protocol: Protocol) -> tuple[list[str] | None, dict[str, list[str]]]:
    """Which sequences a protocol evaluates and which shards hold each one.

    Returns ``(names, shards)``: the selected sequence names in evaluation order and, per name,
    its shard paths in stored order. ``names`` is ``None`` when ``path`` is not a corpus folder
    with an ``index.json`` (then sequences are selected while reading).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the corpus is pose-free but the metrics need poses, or a requested
            sequence is missing.
    """
    from gemdepth.data import remote
    from gemdepth.data.shards import read_index, remote_index, require_complete

    if remote.is_url(str(path)):  # http(s)://, fsspec URLs, pipe: (as the training DataModule)
        p = str(path).rstrip("/")
        index = remote_index(p)  # a missing or incomplete index.json raises, naming the URL

        def shard_path(name: str) -> str:
            return remote.join_url(p, name)
    else:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such folder; convert the {protocol.dataset} benchmark first "
                                    f"(`gemdepth data convert {protocol.dataset} ROOT {p}`, see docs/eval_protocol.md)")
        index = read_index(p) if p.is_dir() else None
        if p.is_dir() and (index is not None or any(p.glob("*.tar"))):
            require_complete(p, index)  # an interrupted conversion: refused, naming --resume

        def shard_path(name: str) -> str:
            return str(p / name)
    if index is None:
        return None, {}
    if index.get("corpus") not in (None, protocol.dataset):
        raise ValueError(f"{p} holds corpus {index.get('corpus')!r} but protocol {protocol.name!r} evaluates "
                         f"{protocol.dataset!r}; point data.path at the {protocol.dataset} shards")
    if protocol.needs_cameras and index.get("has_pose") is False:
        raise ValueError(f"{p}: corpus {index.get('corpus')!r} has no camera poses, but protocol "
                         f"{protocol.name!r} scores {', '.join(protocol.metrics)}, which need them")
    shards: dict[str, list[str]] = {}
    for entry in index["shards"]:
        for seq in entry.get("sequences", []):
            shards.setdefault(str(seq), []).append(shard_path(entry["name"]))
    available = sorted(shards)
    if protocol.sequences is not None:
        missing = [s for s in protocol.sequences if s not in shards]
        if missing:
            more = " …" if len(available) > 20 else ""
            raise ValueError(f"{p}: sequence(s) {missing} of protocol {protocol.name!r} are not in the corpus; "
                             f"it has {len(available)}: {', '.join(available[:20])}{more}")
        names = list(protocol.sequences)
    else:
        names = available
    if protocol.max_sequences is not None:
        if len(names) < protocol.max_sequences:
            log.warning("%s: protocol %s asks for %d sequences, the corpus has %d", p, protocol.name,
                        protocol.max_sequences, len(names))
        names = names[: protocol.max_sequences]
    return names, {n: shards[n] for n in names}


class SequenceDataset(IterableDataset):
    """Prepared evaluation samples of the planned sequences, split over ranks and workers."""

    def __init__(self, path: str | Path, protocol: Protocol, names: list[str] | None,
                 shards: dict[str, list[str]], rank: int = 0, world_size: int = 1, verify: bool = True) -> None:
        super().__init__()
        self.path, self.protocol, self.names, self.shards = str(path), protocol, names, shards
        self.rank, self.world_size, self.verify = rank, world_size, verify

    def _mine(self, position: int) -> bool:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        slot = self.rank * workers + worker
        return position % (self.world_size * workers) == slot

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from gemdepth.data import read_sequences

        if self.names is not None:
            for pos, name in enumerate(self.names):
                if not self._mine(pos):
                    continue
                found = False
                for seq in read_sequences(self.shards[name], verify=self.verify):
                    if str(seq["meta"]["sequence"]) == name:
                        found = True
                        yield self._prepare(seq)
                        break
                if not found:
                    raise ValueError(f"{self.path}: sequence {name!r} is listed in index.json but not in its shards")
            return
        # no index: read everything, select in stored order
        wanted = None if self.protocol.sequences is None else set(self.protocol.sequences)
        taken = 0
        for seq in read_sequences(self.path, verify=self.verify):
            name = str(seq["meta"]["sequence"])
            if wanted is not None and name not in wanted:
                continue
            if self.protocol.max_sequences is not None and taken >= self.protocol.max_sequences:
                break
            pos, taken = taken, taken + 1
            if self._mine(pos):
                yield self._prepare(seq)

    def _prepare(self, seq: dict[str, Any]) -> dict[str, Any]:
        sample = prepare_sequence(seq, self.protocol)
        requested = sample["requested_frames"]
        if requested is not None and sample["frames"] < requested:
            log.info("%s: sequence %s has %d of the %d frames protocol %s asks for; evaluated as it is",
                     self.path, sample["name"], sample["frames"], requested, self.protocol.name)
        return sample


def _identity(batch: Any) -> Any:
    return batch


class EvalDataModule(LightningDataModule):
    """Whole evaluation sequences under a benchmark protocol (see the module docstring).

    Protocol fields (defaults are generic; ``configs/eval/*.yaml`` set the benchmark's values;
    :data:`gemdepth.evaluation.protocol.PROTOCOLS` has the same presets for Python use):

    Args:
        path: folder of converted evaluation shards (one corpus, with ``index.json``), or its
            URL (``https://``, fsspec URLs, ``pipe:``; see :mod:`gemdepth.data.remote`).
        name: protocol name (result files ``eval_<name>.*``, table columns).
        dataset: corpus the shards must hold (``sintel``, ``kitti``, ``scannet``, ``bonn``, …).
        max_depth, min_depth: valid ground truth ``min_depth < gt < max_depth``.
        crop: ``[top, bottom, left, right]`` Python slice bounds of the scored region (``null``
            bounds reach the edge; e.g. ScanNet ``[8, -8, 11, -11]``); ``None``: whole frame.
        crop_input: the model sees the cropped frame (``True``) or the whole frame, cropped after
            inference (``False``, the reference's ScanNet TAE).
        frame_start, frame_stop, frame_step, frame_by, max_frames: frame sampling
            (:class:`~gemdepth.evaluation.protocol.FrameSampling`).
        sequences: explicit sequence names; max_sequences: first N in sorted order.
        alignment, metrics, metric_options: scoring (:func:`gemdepth.metrics.build_metrics`).
        input_size, window, overlap, interp, keyframes, precision, chain_cameras: windowed
            inference (:func:`gemdepth.inference.infer_video`).
        reference_quirks: quirk names (or ``all``) to reproduce published numbers exactly.
        expect_meta: ``meta`` values every sequence must carry (Sintel: ``{pass: clean}``).

    Analyses and output:

    Args:
        pose_noise: GEM pose-noise levels (Table 5), one result row each.
        pose_prob: pose-feeding probabilities (Table 9), one row each (``null``: the model's own).
        lengths: sequence lengths (Table 10), one row each (first N frames; ``null``: the
            protocol's length).
        seed: base seed of the random draws.
        method: row label (default: the checkpoint's file name).
        output_dir: where ``eval_<name>.{json,csv,txt}`` go (default: the run's log folder).
        num_workers: DataLoader workers (decode the next sequence while the model runs).
        verify: check shard checksums against ``index.json``.
    """

    def __init__(
        self,
        path: str,
        name: str = "custom",
        dataset: str = "custom",
        max_depth: float = 80.0,
        min_depth: float = 1e-3,
        crop: list[int | None] | None = None,
        crop_input: bool = True,
        frame_start: int = 0,
        frame_stop: int | None = None,
        frame_step: int = 1,
        frame_by: str = "position",
        max_frames: int | None = None,
        sequences: list[str] | None = None,
        max_sequences: int | None = None,
        alignment: str = "disparity_lstsq",
        metrics: list[str] | None = None,
        metric_options: dict[str, Any] | None = None,
        input_size: int = 518,
        window: int = 32,
        overlap: int = 10,
        interp: int = 8,
        keyframes: list[int] | None = None,
        precision: str = "32",
        chain_cameras: bool = True,
        reference_quirks: list[str] | None = None,
        expect_meta: dict[str, Any] | None = None,
        pose_noise: list[float] | None = None,
        pose_prob: list[float | None] | None = None,
        lengths: list[int | None] | None = None,
        seed: int = 0,
        method: str | None = None,
        output_dir: str | None = None,
        num_workers: int = 0,
        verify: bool = True,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.protocol = Protocol(
            name=name,
            dataset=dataset,
            max_depth=float(max_depth),
            min_depth=float(min_depth),
            crop=Crop.from_list(crop),
            crop_input=crop_input,
            sampling=FrameSampling(frame_start, frame_stop, frame_step, frame_by, max_frames),  # type: ignore[arg-type]
            sequences=None if sequences is None else tuple(sequences),
            max_sequences=max_sequences,
            alignment=alignment,
            metrics=tuple(metrics) if metrics else ("AbsRel", "Delta1"),
            metric_options=dict(metric_options or {}),
            inference=InferenceSettings(
                input_size, window, overlap, interp, None if keyframes is None else tuple(keyframes),
                precision, chain_cameras,  # type: ignore[arg-type]
            ),
            reference_quirks=tuple(reference_quirks or ()),
            expect_meta=dict(expect_meta or {}),
        )
        self.protocol.build_metrics()  # fail at construction on bad metric names/options
        from gemdepth.inference import WindowConfig

        WindowConfig(window, overlap, self.protocol.inference.keyframes, interp)  # and on bad windows
        self.settings: list[AnalysisSetting] = analysis_settings(pose_noise, pose_prob, lengths)
        self.seed = int(seed)
        self.method = method
        self.output_dir = output_dir
        self.num_workers = int(num_workers)
        self.verify = verify
        self._plan: tuple[list[str] | None, dict[str, list[str]]] | None = None
        # one namespaced entry: Lightning merges DataModule and task hparams and refuses clashes
        # (the task has its own ``metrics``)
        self.save_hyperparameters({"evaluation": {
            "path": display(self.path), "protocol": self.protocol.to_dict(),  # no URL password
            "settings": [s.as_dict() for s in self.settings], "seed": self.seed}})

    @classmethod
    def from_protocol(cls, path: str, protocol: Protocol | str, **kwargs: Any) -> EvalDataModule:
        """Build from a :class:`Protocol` (or preset name) plus analysis/output arguments."""
        proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
        return cls(path, **protocol_arguments(proto), **kwargs)

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: str | None = None) -> None:
        if self._plan is None:
            self._plan = plan_sequences(self.path, self.protocol)
            names = self._plan[0]
            if names is not None:
                log.info("protocol %s: %d sequence(s) from %s", self.protocol.name, len(names),
                         display(self.path))

    @property
    def sequence_names(self) -> list[str] | None:
        """The planned sequences (after :meth:`setup`; ``None`` without an index)."""
        return None if self._plan is None else self._plan[0]

    def _dataset(self) -> SequenceDataset:
        self.setup("test")
        assert self._plan is not None
        rank, world = 0, 1
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        return SequenceDataset(self.path, self.protocol, self._plan[0], self._plan[1], rank, world, self.verify)

    def test_dataloader(self) -> DataLoader:
        # one sequence ahead per worker: a decoded 500-frame sequence is ~1-2 GB
        extra = {"prefetch_factor": 1} if self.num_workers > 0 else {}
        return DataLoader(self._dataset(), batch_size=None, num_workers=self.num_workers,
                          collate_fn=_identity, persistent_workers=False, **extra)

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """The prepared samples in this process (no Lightning needed)."""
        yield from self._dataset()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Keep whole sequences on the CPU: the runner streams frames to the model and moves the
        ground truth to the metrics' device itself."""
        return batch


def protocol_arguments(protocol: Protocol) -> dict[str, Any]:
    """:class:`EvalDataModule` arguments (the flat protocol fields) of a :class:`Protocol`."""
    s, inf = protocol.sampling, protocol.inference
    return {
        "name": protocol.name,
        "dataset": protocol.dataset,
        "max_depth": protocol.max_depth,
        "min_depth": protocol.min_depth,
        "crop": None if protocol.crop is None else protocol.crop.as_list(),
        "crop_input": protocol.crop_input,
        "frame_start": s.start,
        "frame_stop": s.stop,
        "frame_step": s.step,
        "frame_by": s.by,
        "max_frames": s.max_frames,
        "sequences": None if protocol.sequences is None else list(protocol.sequences),
        "max_sequences": protocol.max_sequences,
        "alignment": protocol.alignment,
        "metrics": list(protocol.metrics),
        "metric_options": dict(protocol.metric_options),
        "input_size": inf.input_size,
        "window": inf.window,
        "overlap": inf.overlap,
        "interp": inf.interp,
        "keyframes": None if inf.keyframes is None else list(inf.keyframes),
        "precision": inf.precision,
        "chain_cameras": inf.chain_cameras,
        "reference_quirks": list(protocol.reference_quirks),
        "expect_meta": dict(protocol.expect_meta),
    }
