"""benchmarks/bench_online.py runs (so it cannot rot): its latency mode on the mini model, no timing asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_latency_mode_reports_bounded_state(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_online", ROOT / "benchmarks" / "bench_online.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "lat.json"
    code = bench.main(["latency", "--model", str(ROOT / "tests" / "configs" / "official_mini_gemdepth.yaml"),
                       "--frames", "110", "--height", "28", "--width", "28", "--input-size", "28",
                       "--window", "4", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 110 and result["window"] == 4
    assert result["cache_bytes_after_100"] == result["cache_bytes_after_110"] > 0
    assert result["rss_mb_after_100"] > 0 and result["median_ms_frames_51_100"] > 0
