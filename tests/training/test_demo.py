"""``gemdepth demo`` end to end at a miniature size: every stage runs and every promised file exists."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gemdepth.cli import main


def test_demo_rejects_bad_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--size", "50", "56"])
    assert "multiples of 14" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--clip-length", "4"])
    assert "at least 5" in capsys.readouterr().err


def test_demo_miniature_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main([
        "demo", "--out", str(out), "--train-sequences", "3", "--posefree-sequences", "2",
        "--eval-sequences", "1", "--frames", "12", "--clip-length", "6", "--size", "56", "56",
        "--video-frames", "10", "--stage1-steps", "2", "--stage2-steps", "2", "--workers", "1",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert list(result["metrics"]) == ["untrained", "stage 1", "stage 2 (final)"]
    for row in result["metrics"].values():
        assert set(row) >= {"AbsRel", "Delta1", "TAE"}
        assert all(math.isfinite(v) for v in row.values())
    assert result["eval_sequences"] == 1 and result["eval_frames"] == 12
    md = (out / "metrics.md").read_text()
    assert "| untrained |" in md and "| stage 2 (final) |" in md
    assert "| untrained |" in printed and "wrote:" in printed
    infer = out / "inference" / "synthetic_scene"
    for name in ("depth.npz", "depth.mp4", "cameras.json", "points.ply"):
        assert (infer / name).is_file(), name
    depth = np.load(infer / "depth.npz")
    assert depth[depth.files[0]].shape[0] == 10
    for stage in (1, 2):
        assert (out / f"stage{stage}" / "checkpoints" / "last.ckpt").is_file()
