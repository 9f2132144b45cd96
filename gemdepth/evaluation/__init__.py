"""The benchmark protocol behind the paper's tables, and the paper's analyses.

* :mod:`.protocol` — :class:`Protocol` presets (Sintel, KITTI, Bonn, ScanNet, their 500-frame
  variants, the ScanNet TAE subset) and the named reference quirks;
* :mod:`.sequence` — a stored sequence → the frames, crop and ground truth a protocol scores;
* :mod:`.runner` — :func:`evaluate_sequence` (windowed inference + metrics) and the analyses
  (pose noise, pose-feeding probability, sequence length);
* :mod:`.report` — :func:`format_table` in the paper's layout, atomic JSON/CSV/text results;
* :mod:`.datamodule` — ``EvalDataModule`` for ``gemdepth test -c configs/eval/<name>.yaml``;
* :mod:`.lightning` — the task's whole-sequence ``test_step`` / ``on_test_epoch_end``.

``EvalDataModule`` and the Lightning hooks are imported lazily (they pull in Lightning).
"""

from __future__ import annotations

from typing import Any

from gemdepth.evaluation.protocol import (
    PROTOCOLS,
    QUIRKS,
    Box,
    Crop,
    FrameSampling,
    InferenceSettings,
    Protocol,
    get_protocol,
    protocol_names,
    quirk_lines,
)
from gemdepth.evaluation.report import format_table, load_rows, write_results
from gemdepth.evaluation.runner import AnalysisSetting, analysis_settings, evaluate_sequence
from gemdepth.evaluation.sequence import SequenceError, prepare_sequence

__all__ = [
    "PROTOCOLS",
    "QUIRKS",
    "AnalysisSetting",
    "Box",
    "Crop",
    "EvalDataModule",
    "FrameSampling",
    "InferenceSettings",
    "Protocol",
    "SequenceError",
    "analysis_settings",
    "evaluate_sequence",
    "format_table",
    "get_protocol",
    "load_rows",
    "prepare_sequence",
    "protocol_names",
    "quirk_lines",
    "run_benchmark",
    "write_results",
]


def __getattr__(name: str) -> Any:
    if name == "EvalDataModule":
        from gemdepth.evaluation.datamodule import EvalDataModule

        return EvalDataModule
    if name == "run_benchmark":
        from gemdepth.evaluation.lightning import run_benchmark

        return run_benchmark
    raise AttributeError(f"module 'gemdepth.evaluation' has no attribute {name!r}")
