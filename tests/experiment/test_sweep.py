"""A miniature sweep end to end: 2 variants × 2 seeds, 3 steps each, on 28×28 clips.

The sweep is first interrupted after one run (``--only host/seed0``), then re-invoked; the
table is checked against numbers computed here from the per-run ``result.json`` files.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from experiment_helpers import write_experiment
from PIL import Image

from gemdepth.experiment import load_experiment
from gemdepth.experiment.cli import main
from gemdepth.experiment.report import learning_curve
from gemdepth.training.cli import run_lightning_cli as _REAL_FIT

CELLS = ["host/seed0", "gem_astt/seed0", "host/seed1", "gem_astt/seed1"]


def _counting_fit(calls: list[list[str]]) -> Any:
    """``run_lightning_cli`` that records its arguments (always wrapping the real one)."""

    def fit(args: list[str]) -> int:
        calls.append(list(args))
        return _REAL_FIT(args)

    return fit


def _run_of(args: list[str]) -> str:
    """``VARIANT/seedK`` of a fit's arguments (the run folder of its config)."""
    config = Path(args[args.index("-c") + 1])
    return f"{config.parent.parent.name}/{config.parent.name}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The miniature sweep, interrupted after its first run and then re-invoked."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_experiment(folder)
    out = folder / "out"
    first: list[list[str]] = []
    second: list[list[str]] = []
    with pytest.MonkeyPatch.context() as mp:
        import gemdepth.training.cli as training_cli

        mp.setattr(training_cli, "run_lightning_cli", _counting_fit(first))
        assert main([str(path), "--only", "host/seed0", "--no-report"]) == 0
        done = out / "runs" / "host" / "seed0" / "result.json"
        stamp = (done.stat().st_mtime_ns, done.read_bytes())
        assert not (out / "results.json").exists()
        mp.setattr(training_cli, "run_lightning_cli", _counting_fit(second))
        assert main([str(path)]) == 0
    return {"path": path, "out": out, "first": first, "second": second, "stamp": stamp, "done": done}


def test_resumed_sweep_trains_only_the_missing_runs(sweep: dict[str, Any]) -> None:
    assert [_run_of(a) for a in sweep["first"]] == ["host/seed0"]
    assert sorted(_run_of(a) for a in sweep["second"]) == sorted(CELLS[1:])
    assert all("--ckpt_path" not in a for a in sweep["second"])  # fresh runs start from scratch
    done = sweep["done"]
    assert (done.stat().st_mtime_ns, done.read_bytes()) == sweep["stamp"]  # the finished run is untouched
    for cell in CELLS:
        run = sweep["out"] / "runs" / cell
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "result.json").is_file()
        assert json.loads((run / "result.json").read_text())["steps"] == 3


def test_table_matches_the_runs(sweep: dict[str, Any]) -> None:
    out = sweep["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["missing"] == [] and len(results["runs"]) == 4
    md = (out / "results.md").read_text()
    per_run = {c: json.loads((out / "runs" / c / "result.json").read_text()) for c in CELLS}
    for variant in ("host", "gem_astt"):
        for metric in ("AbsRel", "Delta1", "TAE"):
            values = [per_run[f"{variant}/seed{s}"]["eval"]["held_out"]["metrics"][metric] for s in (0, 1)]
            got = results["summary"]["held_out"][variant][metric]
            assert got["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert got["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
            assert f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" in md
    # the best mean of each metric is bold, the others are not
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith(("| host", "| gem_astt"))}
    summary = results["summary"]["held_out"]
    for col, (metric, pick) in enumerate((("AbsRel", min), ("Delta1", max), ("TAE", min))):
        best = pick(summary, key=lambda v: summary[v][metric]["mean"])
        cells = {v: rows[v].split("|")[3 + col].strip() for v in rows}
        assert cells[best].startswith("**") and not any(c.startswith("**") for v, c in cells.items() if v != best)
    assert "0.092" in rows["host"] and rows["gem_astt"].rstrip(" |").endswith("–")  # paper column


def test_plots_are_written(sweep: dict[str, Any]) -> None:
    out = sweep["out"]
    names = json.loads((out / "results.json").read_text())["plots"]
    assert set(names) == {"bars_held_out.png", "learning_curves.png", "tae_frames_held_out.png"}
    for name in names:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 150
            assert np.asarray(img.convert("L")).std() > 5  # not a blank canvas
        assert name in (out / "results.md").read_text()


def test_learning_curves_and_hparams_logged(sweep: dict[str, Any]) -> None:
    out = sweep["out"]
    for cell in CELLS:
        steps, loss = learning_curve(out / "runs" / cell)
        assert steps.tolist() == [0, 1, 2] and np.isfinite(loss).all()
        assert list((out / "hparams" / cell).glob("events.out.tfevents.*"))


def test_tae_curve_agrees_with_the_tae_metric(sweep: dict[str, Any]) -> None:
    result = json.loads((sweep["out"] / "runs" / "host" / "seed0" / "result.json").read_text())
    held = result["eval"]["held_out"]
    assert len(held["tae_curve"]) == 9  # 10 frames per held-out sequence: 9 pairs
    # TAE (mean over sequences of the mean over pairs) = mean over pairs of the per-pair mean
    assert np.mean(held["tae_curve"]) == pytest.approx(held["metrics"]["TAE"], rel=1e-6)
    per_seq = [m["TAE"] for m in held["per_sequence"].values()]
    assert np.mean(per_seq) == pytest.approx(held["metrics"]["TAE"], rel=1e-9)


def test_half_finished_run_resumes_from_last_ckpt(sweep: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A run with a checkpoint but no result resumes (``--ckpt_path last.ckpt``), then evaluates."""
    import gemdepth.training.cli as training_cli

    run = sweep["out"] / "runs" / "gem_astt" / "seed1"
    (run / "result.json").unlink()
    (run / "trained.json").unlink()
    calls: list[list[str]] = []
    monkeypatch.setattr(training_cli, "run_lightning_cli", _counting_fit(calls))
    assert main([str(sweep["path"]), "--index", "3"]) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--ckpt_path") + 1] == str(run / "checkpoints" / "last.ckpt")
    assert json.loads((run / "trained.json").read_text())["resumed_from_step"] == 3
    assert (run / "result.json").is_file()
    assert re.search(r"gem_astt/seed1: resuming training from .*last.ckpt \(step 3\)", capsys.readouterr().out)
    exp = load_experiment(sweep["path"])
    assert [c.key for c in exp.cells()] == CELLS
