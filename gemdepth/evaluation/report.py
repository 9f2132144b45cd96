"""Result tables in the paper's layout, and atomic JSON/CSV/text files of an evaluation run.

A *result row* is a dict ``{"method", "dataset", "setting", "label", "metrics", "counts",
"sequences", …}``: one method (checkpoint) under one analysis setting on one protocol.
:func:`format_table` lays rows out as the paper does — one line per method/setting, a column
group per dataset with its metrics (AbsRel↓, δ1↑, TAE↓, …) — and :func:`write_results` writes
``<stem>.json`` (everything), ``<stem>.csv`` (the table) and ``<stem>.txt`` (the printed table).

``python -m gemdepth.evaluation.report a.json b.json`` merges result files of several runs
(checkpoints, protocols) into one table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "table_rows", "write_results", "load_rows", "atomic_write_text", "main", "RESULT_FORMAT"]

RESULT_FORMAT = "gemdepth-eval/1"

#: Column order and printed name of each metric (arrow: lower/higher is better).
_METRIC_ORDER: tuple[tuple[str, str, int], ...] = (
    ("AbsRel", "AbsRel↓", 3),
    ("Delta1", "δ1↑", 3),
    ("Delta2", "δ2↑", 3),
    ("Delta3", "δ3↑", 3),
    ("RMSE", "RMSE↓", 3),
    ("TAE", "TAE↓", 3),
    ("TCD", "TCD↓", 4),
    ("ATE", "ATE↓", 3),
    ("F1Score", "F1↑", 3),
)
_DISPLAY = {k: (label, digits) for k, label, digits in _METRIC_ORDER}


def _rows_of(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Accept rows or whole result dicts (with ``"rows"``) and return the rows."""
    rows: list[Mapping[str, Any]] = []
    for item in results:
        if "rows" in item:
            rows.extend(item["rows"])
        else:
            rows.append(item)
    return rows


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def table_rows(results: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """The table as ``(header, printed rows, raw-value rows)``.

    Columns: ``Method`` then, per dataset in order of first appearance, its metrics in the
    paper's order (only those some row reports). Rows: one per ``label`` in order of first
    appearance; a cell a row lacks is ``-``.
    """
    rows = _rows_of(results)
    datasets: list[str] = []
    metrics_of: dict[str, list[str]] = {}
    labels: list[str] = []
    cells: dict[tuple[str, str, str], Any] = {}
    for row in rows:
        ds = str(row["dataset"])
        label = str(row.get("label") or row["method"])
        if ds not in datasets:
            datasets.append(ds)
            metrics_of[ds] = []
        if label not in labels:
            labels.append(label)
        for name, value in row["metrics"].items():
            if name not in metrics_of[ds]:
                metrics_of[ds].append(name)
            cells[(label, ds, name)] = value
    order = {k: i for i, (k, _, _) in enumerate(_METRIC_ORDER)}
    for ds in datasets:
        metrics_of[ds].sort(key=lambda n: (order.get(n, len(order)), n))
    header = ["Method"] + [f"{ds} {_DISPLAY.get(m, (m, 3))[0]}" for ds in datasets for m in metrics_of[ds]]
    printed, raw = [], []
    for label in labels:
        p_row, r_row = [label], [label]
        for ds in datasets:
            for m in metrics_of[ds]:
                value = cells.get((label, ds, m))
                p_row.append(_fmt(value, _DISPLAY.get(m, (m, 3))[1]))
                r_row.append(None if value is None else float(value))
        printed.append(p_row)
        raw.append(r_row)
    return header, printed, raw


def format_table(results: Iterable[Mapping[str, Any]]) -> str:
    """A plain-text table in the paper's layout (rows = methods/settings, columns = dataset ×
    metric). ``results``: result rows, or result dicts holding ``"rows"``."""
    header, printed, _ = table_rows(results)
    if len(header) == 1:
        return "(no results)"
    widths = [max(len(r[i]) for r in [header, *printed]) for i in range(len(header))]
    def line(cols: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in printed)])


def _csv_text(results: Iterable[Mapping[str, Any]]) -> str:
    header, _, raw = table_rows(results)
    ascii_header = [h.replace("↓", "").replace("↑", "").replace("δ", "delta") for h in header]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ascii_header)
    for row in raw:
        writer.writerow([row[0]] + ["" if v is None else repr(v) for v in row[1:]])
    return buf.getvalue()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically with ordinary permissions (folders created)."""
    from gemdepth import atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.atomic_write_text(path, text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(result: Mapping[str, Any], out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json`` (the whole result), ``<stem>.csv`` and ``<stem>.txt`` (the table)
    atomically into ``out_dir``; returns the paths by kind."""
    out = Path(out_dir)
    rows = _rows_of([result])
    text = format_table(rows)
    paths = {
        "json": atomic_write_text(out / f"{stem}.json",
                                  json.dumps(result, indent=1, default=_json_default, allow_nan=True)),
        "csv": atomic_write_text(out / f"{stem}.csv", _csv_text(rows)),
        "txt": atomic_write_text(out / f"{stem}.txt", text + "\n"),
    }
    return paths


def load_rows(paths: Iterable[str | os.PathLike]) -> list[Mapping[str, Any]]:
    """Result rows of one or more ``.json`` files written by :func:`write_results`."""
    rows: list[Mapping[str, Any]] = []
    for p in paths:
        path = Path(p)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable evaluation result ({exc})") from exc
        if not isinstance(data, Mapping) or data.get("format") != RESULT_FORMAT:
            raise ValueError(f"{path}: not a gemdepth evaluation result (expected format {RESULT_FORMAT!r})")
        rows.extend(_rows_of([data]))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Merge evaluation result files into one table (printed; ``--csv`` also writes it)."""
    parser = argparse.ArgumentParser(prog="python -m gemdepth.evaluation.report",
                                     description="merge gemdepth evaluation results into one table")
    parser.add_argument("results", nargs="+", type=Path, help="eval_*.json files written by gemdepth test")
    parser.add_argument("--csv", type=Path, default=None, help="also write the merged table as CSV")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        rows = load_rows(args.results)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.csv is not None:
        atomic_write_text(args.csv, _csv_text(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
