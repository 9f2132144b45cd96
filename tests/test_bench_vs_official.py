"""benchmarks/bench_vs_official.py: its own logic, and (given an official checkout) the whole run.

The end-to-end test needs the official GemDepth code, which CI does not have: set
``GEMDEPTH_OFFICIAL`` to the root of a checkout (the folder holding ``model/gemdepth.py``) and
install the ``official`` extra (opencv, easydict). No timing is asserted anywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_vs_official", ROOT / "benchmarks" / "bench_vs_official.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_official_path_is_required(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GEMDEPTH_OFFICIAL", raising=False)
    with pytest.raises(SystemExit):
        _bench().parse_args([])
    assert "GEMDEPTH_OFFICIAL" in capsys.readouterr().err


def test_sizes_and_defaults_are_checked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    monkeypatch.setenv("GEMDEPTH_OFFICIAL", "/somewhere")
    args = bench.parse_args(["--video-size", "100x160"])
    assert args.official == Path("/somewhere") and args.size == (196, 350) and args.threads == 2
    assert args.input_size == 100  # the shorter video side unless given
    with pytest.raises(SystemExit):
        bench.parse_args(["--size", "100x160"])  # the forward input must be multiples of 14
    assert "multiples of 14" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_missing_checkout_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model/gemdepth\.py not found.*--official"):
        _bench().import_official(tmp_path)


def test_alternation_flips_order_and_ratio_is_ours_over_official() -> None:
    bench = _bench()
    calls: list[str] = []
    times = bench.alternate({"ours": lambda: calls.append("ours"), "official": lambda: calls.append("official")},
                            repeats=2, warmup=1)
    assert calls == ["ours", "official", "official", "ours", "ours", "official"]
    assert [len(v) for v in times.values()] == [2, 2]  # the warm-up round is not counted
    summary = bench.summarize({"ours": [1.0, 3.0, 2.0], "official": [4.0, 5.0, 4.0]})
    assert summary["median_s"] == {"ours": 2.0, "official": 4.0} and summary["ratio"] == 0.5
    assert summary["paired_ratio_median"] == 0.5  # median of 1/4, 3/5, 2/4


def test_rel_diff_is_relative_to_the_official_and_checks_shapes() -> None:
    import numpy as np

    bench = _bench()
    ref = np.array([[0.0, 4.0], [-2.0, 1.0]])
    assert bench.rel_diff(ref + np.array([[0.0, 0.0], [0.0, 0.5]]), ref) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="shapes differ"):
        bench.rel_diff(ref[0], ref)


@pytest.mark.skipif(not os.environ.get("GEMDEPTH_OFFICIAL"),
                    reason="set GEMDEPTH_OFFICIAL to an official GemDepth checkout (not available in CI)")
def test_against_the_official_code(tmp_path: Path) -> None:
    pytest.importorskip("cv2", reason="the official code needs opencv: pip install -e '.[official]'")
    pytest.importorskip("easydict", reason="the official code needs easydict: pip install -e '.[official]'")
    import torch

    bench = _bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        # a tolerance of 0 must stop the run before timing (the float noise is > 0)
        assert bench.main(["--frames", "2", "--size", "28x28", "--video-frames", "0", "--tolerance", "0"]) == 1
        code = bench.main(["--frames", "2", "--size", "28x42", "--repeats", "1", "--video-frames", "24",
                           "--video-size", "30x40", "--input-size", "28", "--video-repeats", "1",
                           "--threads", "1", "--profile", "--profile-repeats", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # main() sets the process-wide thread count
    assert code == 0
    result = json.loads(out.read_text())
    assert result["parity"]["depth_rel_diff"] <= 1e-4
    assert 0.5 < result["parity"]["positive_fraction"] < 1.0  # the calibrated weights leave a live depth
    assert result["video"]["depth_rel_diff"] <= 1e-4
    assert result["video"]["what"].endswith("net 28x42")  # both pipelines fed the same resized frames
    assert result["forward"]["ratio"] > 0 and result["video"]["ratio"] > 0
    for side in ("ours", "official"):
        parts = result["profile"][side]["parts"]
        assert set(parts) == {"encoder", "gem", "astt_spatial", "astt_time", "head", "other"}
        assert all(parts[p]["ms"] > 0 for p in ("encoder", "gem", "astt_spatial", "astt_time", "head"))
