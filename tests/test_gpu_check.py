"""``benchmarks/gpu_check.py --device cpu --tiny`` runs every check to the end (so the GPU check
cannot rot while no GPU is around), and a failing check becomes a row instead of an abort."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_on_cpu_with_tiny_configs(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--budget", "3000", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert not [r for r in rows if r["value"] in ("ERROR", "skipped") and r["check"] != "forward"], rows
    by_check: dict[str, list[dict]] = {}
    for row in rows:
        by_check.setdefault(row["check"], []).append(row)
    forward = [r for r in by_check["forward"] if r["value"] != "skipped"]
    assert [r["setting"].split()[0] for r in forward] == ["gemdepth-vda-vits", "gemdepth-vda-vitl"]
    assert all(r["data"]["ms_per_frame"] > 0 and r["data"]["peak_bytes"] > 0 for r in forward)
    train = by_check["train step"]
    assert len(train) == 2 and all(r["data"]["seconds"] > 0 for r in train)
    precision = by_check["precision"]  # bf16 and fp16 against fp32, on a depth that is not all zero
    assert [r["setting"].split()[-3] for r in precision] == ["bfloat16", "float16"]
    assert all(0 <= r["data"]["mean_rel_diff"] < 0.05 and r["data"]["finite"] for r in precision)
    pipeline = by_check["infer pipeline"]
    assert len(pipeline) == 1 and pipeline[0]["data"]["frames_per_second"] > 0
    assert pipeline[0]["data"]["run"]["frames"] == 24
    # every attention family of GemDepth shows up, each with at least one usable backend (math)
    owners = {r["data"]["module"].split(".")[0] for r in by_check["sdpa backends"]}
    assert owners == {"encoder", "gem", "astt", "head"}
    assert all("math" in r["data"]["usable"] for r in by_check["sdpa backends"])
    assert "check" in proc.stdout and "sdpa backends" in proc.stdout  # the printed table


def test_a_failing_check_becomes_an_error_row(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import torch

    settings = gpu_check.Settings(
        device=torch.device("cpu"), tiny=True, size=28, frames=8, dtype=torch.float32, compile=False,
        budget_s=100.0, video_hw=(72, 128), video_frames=24,
    )

    def boom() -> None:
        raise RuntimeError("CUDA out of memory\nmore")

    rows: list = []
    gpu_check._guarded(rows, "train step", "x", settings, 1.0, boom)
    assert rows[0].value == "ERROR" and rows[0].note == "RuntimeError: CUDA out of memory"
    settings.budget_s = 0.0
    gpu_check._guarded(rows, "forward", "y", settings, 1.0, boom)
    assert rows[1].value == "skipped" and "time budget" in rows[1].note
