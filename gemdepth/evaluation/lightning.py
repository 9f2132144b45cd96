"""Lightning glue for the benchmark: whole-sequence ``test_step`` and ``on_test_epoch_end``.

The task (``GemDepthTask``) delegates to these when the batch is a whole evaluation sequence
from :class:`~gemdepth.evaluation.datamodule.EvalDataModule`::

    from gemdepth.evaluation.lightning import is_sequence_batch, sequence_test_epoch_end, sequence_test_step

    def test_step(self, batch, batch_idx):
        if is_sequence_batch(batch):
            return sequence_test_step(self, batch, batch_idx)
        ...

    def on_test_epoch_end(self):
        if sequence_test_epoch_end(self) is not None:
            return
        ...

Per batch every analysis setting of the DataModule (pose noise, pose probability, length) runs
the sequence through :func:`gemdepth.evaluation.runner.evaluate_sequence` into that setting's
metric collection. At the end the collections are computed (synced over DDP ranks), logged as
``test/<protocol>[/<setting>]/<metric>``, printed as a table in the paper's layout and written
as ``eval_<protocol>.{json,csv,txt}`` (rank 0, atomic) next to the run's logs.

:func:`run_benchmark` does the same without a Trainer (scripts, notebooks, tests).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemdepth.evaluation.protocol import Protocol
from gemdepth.evaluation.report import RESULT_FORMAT, format_table, write_results
from gemdepth.evaluation.runner import AnalysisSetting, evaluate_sequence

__all__ = [
    "BenchmarkRun",
    "is_sequence_batch",
    "sequence_test_step",
    "sequence_test_epoch_end",
    "run_benchmark",
    "STATE_ATTR",
]

log = logging.getLogger("gemdepth.evaluation")

#: Attribute of the LightningModule holding the running :class:`BenchmarkRun`.
STATE_ATTR = "_gemdepth_benchmark"


def is_sequence_batch(batch: Any) -> bool:
    """Whether ``batch`` is one prepared evaluation sequence (an ``EvalDataModule`` batch)."""
    return isinstance(batch, Mapping) and "rgb" in batch and "gt_box" in batch and "video" not in batch


def _dist() -> tuple[bool, int, int]:
    ok = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not ok:
        return False, 0, 1
    return True, torch.distributed.get_rank(), torch.distributed.get_world_size()


class BenchmarkRun:
    """Metric collections and per-sequence records of one benchmark run (all settings)."""

    def __init__(
        self,
        protocol: Protocol,
        settings: Sequence[AnalysisSetting],
        *,
        method: str,
        device: torch.device | str,
        seed: int = 0,
        source: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        if not settings:
            raise ValueError("a benchmark run needs at least one analysis setting")
        self.protocol = protocol
        self.settings = list(settings)
        self.method = method
        self.seed = seed
        self.source = source
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.metrics = [protocol.build_metrics().to(self.device) for _ in self.settings]
        self.records: list[list[dict[str, Any]]] = [[] for _ in self.settings]

    def update(self, model: nn.Module, sample: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Evaluate one prepared sequence under every setting; returns the per-setting records."""
        out = []
        for i, setting in enumerate(self.settings):
            record = evaluate_sequence(
                model, sample, self.protocol, pose_noise=setting.pose_noise, pose_prob=setting.pose_prob,
                length=setting.length, device=self.device, metrics=self.metrics[i], seed=self.seed,
            )
            if record["short"]:
                log.info("%s: sequence %s has %d of %d requested frames", self.protocol.name, record["name"],
                         record["frames"], record["requested_frames"])
            self.records[i].append(record)
            out.append(record)
        return out

    def _gather(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ok, _, world = _dist()
        if not ok or world == 1:
            return items
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, items)
        merged = [r for part in gathered for r in (part or [])]
        return sorted(merged, key=lambda r: r["name"])

    def compute(self) -> dict[str, Any]:
        """Compute every setting's metrics (a collective under DDP: call on every rank), gather
        the per-sequence records, reset, and return the result dict (``rows`` for the table)."""
        import warnings

        rows = []
        for setting, metrics, records in zip(self.settings, self.metrics, self.records):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                values = {k: float(v) for k, v in metrics.compute().items()}
                counts = {k: m.counts() for k, m in metrics.items()}
            metrics.reset()
            records = self._gather(records)
            frames = sum(r["frames"] for r in records)
            seconds = sum(r["seconds"] for r in records)
            short = sum(1 for r in records if r["short"])
            if short:
                log.warning("%s (%s): %d of %d sequences have fewer frames than requested", self.protocol.name,
                            setting.label() or "base", short, len(records))
            label = self.method if setting.is_default else f"{self.method} · {setting.label()}"
            rows.append({
                "method": self.method,
                "dataset": self.protocol.name,
                "label": label,
                "setting": setting.as_dict(),
                "metrics": values,
                "counts": counts,
                "sequences_evaluated": len(records),
                "short_sequences": short,
                "frames": frames,
                "seconds": round(seconds, 3),
                "fps": round(frames / seconds, 3) if seconds > 0 else None,
                "sequences": records,
            })
        self.records = [[] for _ in self.settings]
        return {
            "format": RESULT_FORMAT,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": self.method,
            "checkpoint": self.checkpoint,
            "source": self.source,
            "seed": self.seed,
            "protocol": self.protocol.to_dict(),
            "rows": rows,
        }


def _method_name(ckpt: str | None, explicit: str | None) -> str:
    if explicit:
        return explicit
    if ckpt:
        return Path(ckpt).stem
    return "model"


def _output_dir(trainer: Any, explicit: str | None, ckpt: str | None) -> Path:
    if explicit:
        return Path(explicit)
    log_dir = getattr(trainer, "log_dir", None) if trainer is not None else None
    if log_dir:
        return Path(log_dir)
    if ckpt and Path(ckpt).exists():
        return Path(ckpt).resolve().parent
    root = getattr(trainer, "default_root_dir", None) if trainer is not None else None
    return Path(root or os.getcwd())


def _start(module: Any) -> BenchmarkRun:
    trainer = module.trainer
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "protocol") or not hasattr(dm, "settings"):
        raise RuntimeError("whole-sequence test batches come from gemdepth.evaluation.EvalDataModule; run "
                           "`gemdepth test --ckpt CKPT -c configs/eval/<benchmark>.yaml`")
    ckpt = getattr(trainer, "ckpt_path", None)
    with torch.inference_mode(False):  # metric states must outlive the test loop's inference mode
        run = BenchmarkRun(dm.protocol, dm.settings, method=_method_name(ckpt, dm.method), device=module.device,
                           seed=dm.seed, source=getattr(dm, "path", None),
                           checkpoint=None if ckpt is None else str(ckpt))
    setattr(module, STATE_ATTR, run)
    return run


def sequence_test_step(module: Any, batch: Mapping[str, Any], batch_idx: int) -> None:
    """``test_step`` for an ``EvalDataModule`` batch: evaluate the sequence under every setting."""
    run = getattr(module, STATE_ATTR, None) or _start(module)
    model = getattr(module, "model", module)
    run.update(model, batch)


def _metric_logs(result: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for row in result["rows"]:
        setting = AnalysisSetting(**row["setting"])
        prefix = f"test/{row['dataset']}" + ("" if setting.is_default else f"/{setting.key()}")
        for name, value in row["metrics"].items():
            if math.isfinite(value):
                out[f"{prefix}/{name}"] = value
    return out


def sequence_test_epoch_end(module: Any) -> dict[str, Any] | None:
    """``on_test_epoch_end`` of a benchmark run: compute, log, print and save; ``None`` when
    this test run had no whole-sequence batches (the task then does its usual thing)."""
    run: BenchmarkRun | None = getattr(module, STATE_ATTR, None)
    if run is None:
        trainer = getattr(module, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "protocol"):
            return None
        run = _start(module)  # this rank saw no sequence but must join the metric sync
    with torch.inference_mode(False):
        result = run.compute()
    delattr(module, STATE_ATTR)
    trainer = module.trainer
    logs = _metric_logs(result)
    if logs:
        module.log_dict(logs, sync_dist=False)
    if trainer.is_global_zero:
        dm = trainer.datamodule
        out_dir = _output_dir(trainer, getattr(dm, "output_dir", None), run.checkpoint)
        paths = write_results(result, out_dir, f"eval_{run.protocol.name}")
        result["files"] = {k: str(v) for k, v in paths.items()}
        print(f"\n{run.protocol.name}\n{format_table(result['rows'])}\n(results: {paths['json']})")
    return result


def run_benchmark(
    model: nn.Module,
    datamodule: Any,
    *,
    device: torch.device | str | None = None,
    method: str | None = None,
    output_dir: str | os.PathLike | None = None,
    samples: Iterable[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run an ``EvalDataModule``'s protocol and analyses on ``model`` without a Trainer.

    Writes ``eval_<protocol>.{json,csv,txt}`` into ``output_dir`` (or the DataModule's
    ``output_dir``; nothing is written when both are ``None``) and returns the result dict.
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else "cpu"
    model.eval()
    run = BenchmarkRun(datamodule.protocol, datamodule.settings, method=method or datamodule.method or "model",
                       device=device, seed=datamodule.seed, source=getattr(datamodule, "path", None))
    for sample in (samples if samples is not None else datamodule.iter_samples()):
        run.update(model, sample)
    result = run.compute()
    target = output_dir if output_dir is not None else getattr(datamodule, "output_dir", None)
    if target is not None:
        paths = write_results(result, target, f"eval_{run.protocol.name}")
        result["files"] = {k: str(v) for k, v in paths.items()}
    return result
