"""Failures that used to be swallowed are logged and counted: an unfinished depth.mp4 that
cannot be closed, non-finite camera poses (identity similarity) and a constant window (scale 0)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fakes import FakeVideoModel, make_frames

from gemdepth.inference import FrameResult, InferenceOptions, OutputOptions, infer_video, run_source
from gemdepth.inference.readers import FrameSource
from gemdepth.inference.trajectory import fit_window_similarity
from gemdepth.inference.writers import DepthRange, DepthVideoWriter


class _Frames(FrameSource):
    def __init__(self, frames: np.ndarray, name: str = "clip") -> None:
        self.path, self.name, self.frames = Path(name), name, frames
        self.source_fps = self.fps = 10.0
        self.height, self.width = frames.shape[1:3]
        self.frame_count = len(frames)

    def __iter__(self):  # noqa: ANN204
        yield from self.frames


class _LaterWindows(FakeVideoModel):
    """From its ``after``-th call on, the output is changed by ``change``."""

    def __init__(self, change: str, after: int = 1) -> None:
        super().__init__()
        self.change, self.after, self.n = change, after, 0

    def forward(self, video):  # noqa: ANN001, ANN201
        out = super().forward(video)
        self.n += 1
        if self.n > self.after:
            if self.change == "nan_poses":
                out.extrinsics = torch.full_like(out.extrinsics, float("nan"))
            elif self.change == "constant_depth":
                out.depth = torch.full_like(out.depth, 0.7)
        return out


def _run(model: torch.nn.Module, tmp_path: Path, frames: int = 60) -> dict:
    # window 32, stride 22: windows start at frames 0, 22 and 44
    return run_source(
        model.eval(), _Frames(make_frames(frames, 24, 32)), tmp_path, InferenceOptions(input_size=28),
        OutputOptions(progress=False, video=False),
    )


def test_video_writer_abort_logs_a_failed_close(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = DepthVideoWriter(tmp_path / "depth.mp4", 24, 32, 10.0, DepthRange(0.0, 1.0, 1.0))
    writer.add(FrameResult(0, np.ones((24, 32), np.float32), make_frames(1, 24, 32)[0]), 0)
    real = writer.container

    class BrokenClose:  # PyAV's container attributes are read-only: wrap it
        def close(self) -> None:
            real.close()
            raise OSError(5, "Input/output error")

    writer.container = BrokenClose()
    with caplog.at_level(logging.WARNING, logger="gemdepth.inference.writers"):
        writer.abort()
    assert f"aborting {tmp_path / '.depth.mp4.partial'}: closing the unfinished video failed" in caplog.text
    assert "Input/output error" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_non_finite_poses_warn_and_mark_the_fallback(caplog: pytest.LogCaptureFixture) -> None:
    good = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    bad = good.clone()
    bad[1, 0, 3] = float("inf")
    with caplog.at_level(logging.WARNING, logger="gemdepth.inference.trajectory"):
        sim = fit_window_similarity(bad, good)
    assert sim.fallback is not None and "1 of 3 in the window" in sim.fallback
    assert sim.scale == 1.0 and torch.equal(sim.rotation, torch.eye(3, dtype=torch.float64))
    assert "cannot chain a window's cameras: non-finite camera poses" in caplog.text
    assert fit_window_similarity(good, good).fallback is None


def test_non_finite_window_poses_are_counted_in_run_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        info = _run(_LaterWindows("nan_poses"), tmp_path)
    run = json.loads((tmp_path / "clip" / "run.json").read_text())
    # windows 1 and 2 cannot be chained: window 1's poses are NaN, and window 2 is fitted on them
    assert run["windows"] == info["windows"] == {
        "count": 3, "constant_depth_scale_zero": 0, "cameras_unchained_non_finite": 2
    }
    assert any("2 of 3 windows had non-finite camera poses" in w for w in run["warnings"])
    assert caplog.text.count("cannot chain a window's cameras") == 2


def test_constant_window_warns_and_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gemdepth.inference.windowing"):
        info = _run(_LaterWindows("constant_depth"), tmp_path)
    assert info["windows"]["count"] == 3 and info["windows"]["constant_depth_scale_zero"] == 2
    assert "window 1 (from frame 22): the depth of its alignment frames is constant" in caplog.text
    assert "window 2 (from frame 44)" in caplog.text
    assert any("2 of 3 windows had constant depth" in w for w in info["warnings"])


def test_a_normal_run_reports_no_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        info = _run(FakeVideoModel(), tmp_path)
    assert info["windows"] == {"count": 3, "constant_depth_scale_zero": 0, "cameras_unchained_non_finite": 0}
    assert info["warnings"] == [] and "constant" not in caplog.text and "cannot chain" not in caplog.text


def test_constant_window_scale_matches_an_independent_fit() -> None:
    """The warned-about case is exactly the degenerate least-squares system (zero determinant)."""
    scales = []
    list(infer_video(_LaterWindows("constant_depth").eval(), make_frames(40, 24, 32), input_size=28,
                     on_window=lambda w: scales.append(w.scale)))
    assert scales[0] == 1.0 and scales[1] == 0.0
    pred = np.full(10, 0.7)
    a = np.stack([pred, np.ones_like(pred)], 1)
    assert np.linalg.matrix_rank(a) == 1  # a constant map: scale and shift cannot both be fitted
