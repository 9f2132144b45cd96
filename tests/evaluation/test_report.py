"""Tables in the paper's layout, result files, and merging results of several runs."""

from __future__ import annotations

import csv
import json
import math

import pytest

from gemdepth.evaluation.report import RESULT_FORMAT, format_table, load_rows, main, table_rows, write_results


def _row(method: str, dataset: str, **metrics: float) -> dict:
    return {"method": method, "dataset": dataset, "label": method, "setting": {}, "metrics": metrics}


ROWS = [
    _row("VDA", "bonn_500", AbsRel=0.0712, Delta1=0.9591),
    _row("VDA", "scannet_tae", TAE=0.5712),
    _row("GemDepth", "bonn_500", Delta1=0.978, AbsRel=0.0514),
    _row("GemDepth", "sintel", AbsRel=float("nan"), Delta1=0.827),
]


def test_table_layout_rows_methods_columns_dataset_metric() -> None:
    header, printed, raw = table_rows(ROWS)
    assert header == ["Method", "bonn_500 AbsRel↓", "bonn_500 δ1↑", "scannet_tae TAE↓",
                      "sintel AbsRel↓", "sintel δ1↑"]
    assert printed == [["VDA", "0.071", "0.959", "0.571", "-", "-"],
                       ["GemDepth", "0.051", "0.978", "-", "n/a", "0.827"]]
    assert raw[1][1] == 0.0514 and raw[0][4] is None and math.isnan(raw[1][4])
    text = format_table(ROWS)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("Method") and set(lines[1]) == {"-"}
    assert lines[2].split() == ["VDA", "0.071", "0.959", "0.571", "-", "-"]
    assert format_table([]) == "(no results)"


def test_results_are_written_atomically_and_merge(tmp_path, capsys) -> None:
    a = {"format": RESULT_FORMAT, "rows": ROWS[:2]}
    b = {"format": RESULT_FORMAT, "rows": ROWS[2:]}
    pa = write_results(a, tmp_path / "a", "eval_x")
    pb = write_results(b, tmp_path / "b", "eval_y")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["eval_x.csv", "eval_x.json", "eval_x.txt"]
    with pa["csv"].open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Method", "bonn_500 AbsRel", "bonn_500 delta1", "scannet_tae TAE"]
    assert rows[1] == ["VDA", "0.0712", "0.9591", "0.5712"]
    assert json.loads(pa["json"].read_text())["rows"][0]["metrics"]["AbsRel"] == 0.0712
    loaded = load_rows([pa["json"], pb["json"]])
    assert [(r["method"], r["dataset"]) for r in loaded] == [(r["method"], r["dataset"]) for r in ROWS]
    assert loaded[2]["metrics"] == ROWS[2]["metrics"] and math.isnan(loaded[3]["metrics"]["AbsRel"])
    assert not list((tmp_path / "a").glob(".*tmp*"))  # no temporary files left behind
    merged = tmp_path / "merged.csv"
    assert main([str(pa["json"]), str(pb["json"]), "--csv", str(merged)]) == 0
    out = capsys.readouterr().out
    assert "GemDepth" in out and "VDA" in out and "sintel δ1↑" in out
    assert merged.read_text().splitlines()[0].startswith("Method,bonn_500 AbsRel,bonn_500 delta1")


def test_bad_result_files_are_refused(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a gemdepth evaluation result"):
        load_rows([bad])
    assert main([str(bad)]) == 2 and "not a gemdepth evaluation result" in capsys.readouterr().err
