"""The experiment's results: ``results.json``, ``results.md`` and PNG plots from the finished runs.

Per evaluation set, variant and metric: mean and sample standard deviation (``ddof=1``) over
seeds, the per-seed values, the best mean in bold, the paper's numbers beside where the
experiment file gives them. Whether a difference "exceeds the seed-to-seed spread" is decided
conservatively: the ranges (min..max over seeds) of the two variants do not overlap.

Plots (matplotlib, Agg): ``bars_<set>.png`` (mean ± std per variant, seeds as dots),
``learning_curves.png`` (training loss per step from each run's CSV log, mean over seeds with a
min–max band) and ``tae_frames_<set>.png`` (TAE of each frame pair over the frame index).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gemdepth.atomic import atomic_path, atomic_write_text
from gemdepth.experiment.config import Experiment
from gemdepth.experiment.runner import RESULT_FILE, run_dir

__all__ = [
    "collect_results",
    "format_markdown",
    "higher_is_better",
    "learning_curve",
    "summarise",
    "write_report",
]

LOSS_KEY = "train/loss"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (the metric class says so)."""
    from gemdepth.metrics import METRICS

    cls = METRICS.get(metric)
    return bool(getattr(cls, "higher_is_better", False)) if cls is not None else metric.startswith("Delta")


def collect_results(exp: Experiment) -> tuple[list[dict[str, Any]], list[str]]:
    """Finished runs' results (grid order) and the keys of the runs not finished."""
    runs, missing = [], []
    for cell in exp.cells():
        path = run_dir(exp, cell) / RESULT_FILE
        if path.is_file():
            runs.append(json.loads(path.read_text()))
        else:
            missing.append(cell.key)
    return runs, missing


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
            "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size), "values": [float(v) for v in arr]}


def summarise(exp: Experiment, runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{eval set: {variant: {metric: {mean, std, min, max, n, values}}}}`` over seeds."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name in exp.eval_sets:
        per_variant: dict[str, dict[str, dict[str, Any]]] = {}
        for variant in exp.variants:
            mine = [r for r in runs if r["variant"] == variant and name in r["eval"]]
            if not mine:
                continue
            per_variant[variant] = {
                m: _stats([r["eval"][name]["metrics"][m] for r in mine
                           if math.isfinite(r["eval"][name]["metrics"].get(m, math.nan))])
                for m in exp.metrics
                if any(math.isfinite(r["eval"][name]["metrics"].get(m, math.nan)) for r in mine)
            }
        out[name] = per_variant
    return out


def _best(per_variant: dict[str, dict[str, dict[str, Any]]], metric: str) -> str | None:
    cands = {v: s[metric]["mean"] for v, s in per_variant.items() if metric in s}
    if not cands:
        return None
    pick = max if higher_is_better(metric) else min
    return pick(cands, key=cands.__getitem__)


def comparisons(exp: Experiment, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant against the first (the reference, e.g. the host) per set and metric: the
    difference of means and whether the seed ranges are disjoint (beyond seed-to-seed spread)."""
    ref = next(iter(exp.variants))
    rows = []
    for name, per_variant in summary.items():
        if ref not in per_variant:
            continue
        for variant, stats in per_variant.items():
            if variant == ref:
                continue
            for metric, s in stats.items():
                r = per_variant[ref].get(metric)
                if r is None:
                    continue
                diff = s["mean"] - r["mean"]
                disjoint = s["min"] > r["max"] or s["max"] < r["min"]
                better = (diff > 0) == higher_is_better(metric) and diff != 0
                rows.append({"set": name, "variant": variant, "reference": ref, "metric": metric,
                             "difference": diff, "better": better,
                             "beyond_spread": bool(disjoint and s["n"] > 1 and r["n"] > 1)})
    return rows


def _cell(s: dict[str, Any] | None, bold: bool) -> str:
    if s is None:
        return "–"
    text = f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"
    return f"**{text}**" if bold else text


def format_markdown(exp: Experiment, summary: dict[str, Any], runs: list[dict[str, Any]], missing: list[str],
                    plots: list[Path]) -> str:
    """``results.md``: one table per evaluation set, the comparison against the reference, plots."""
    arrows = {m: "↑" if higher_is_better(m) else "↓" for m in exp.metrics}
    budget = (f"{exp.budget['max_steps']} steps" if "max_steps" in exp.budget
              else f"wall clock {exp.budget['max_time']}")
    lines = [f"# {exp.name}", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [(f"Runs: {len(runs)} finished of {len(runs) + len(missing)} "
               f"({len(exp.variants)} variants × seeds {exp.seeds}), budget {budget} per run. "
               "Mean ± sample std over seeds (ddof 1); best mean in bold. TAE ×100."), ""]
    if missing:
        lines += [f"Not finished: {', '.join(missing)}.", ""]
    paper = exp.paper or {}
    pcols = paper.get("columns", []) if paper.get("values") else []
    for name, per_variant in summary.items():
        lines += [f"## {name}" + (" (primary)" if name == exp.primary else ""), ""]
        head = ["variant", "n"] + [f"{m} {arrows[m]}" for m in exp.metrics] + [f"paper {c}" for c in pcols]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        best = {m: _best(per_variant, m) for m in exp.metrics}
        for variant in exp.variants:
            stats = per_variant.get(variant)
            n = max((s["n"] for s in stats.values()), default=0) if stats else 0
            row = [variant, str(n)] + [_cell(stats.get(m) if stats else None, best[m] == variant)
                                       for m in exp.metrics]
            vals = paper.get("values", {}).get(variant)
            row += [f"{v:.3f}" for v in vals] if vals else ["–"] * len(pcols)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    comp = comparisons(exp, summary)
    if comp:
        ref = comp[0]["reference"]
        lines += [f"## Against `{ref}` (seed ranges disjoint = beyond seed-to-seed spread)", "",
                  "| set | variant | metric | Δ mean | better | beyond spread |", "|---|---|---|---:|---|---|"]
        for c in comp:
            lines.append(f"| {c['set']} | {c['variant']} | {c['metric']} | {c['difference']:+.4f} | "
                         f"{'yes' if c['better'] else 'no'} | {'**yes**' if c['beyond_spread'] else 'no'} |")
        lines.append("")
    if paper.get("source"):
        lines += [(f"Paper numbers: {paper['source']}. They are real-benchmark numbers of a pretrained "
                   "ViT-L model, shown for the direction of each effect, not for the values."), ""]
    if exp.unsupported:
        lines += ["Not reproduced by this experiment:", ""]
        lines += [f"- {k}: {v}" for k, v in exp.unsupported.items()] + [""]
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def learning_curve(run: Path, key: str = LOSS_KEY) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` from a run's CSV log (``csv/version_0/metrics.csv``), one
    value per step (a resumed run's repeated steps keep the last)."""
    path = run / "csv" / "version_0" / "metrics.csv"
    if not path.is_file():
        return np.zeros(0), np.zeros(0)
    by_step: dict[int, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(key)
            if value not in (None, "") and row.get("step") not in (None, ""):
                by_step[int(row["step"])] = float(value)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the lock (experiment extra)
        raise ImportError("the experiment plots need matplotlib: pip install 'gemdepth[experiment]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_bars(exp: Experiment, name: str, per_variant: dict[str, Any], path: Path) -> Path:
    """Mean ± std per variant, one panel per metric, each seed as a dot."""
    plt = _pyplot()
    variants = [v for v in exp.variants if v in per_variant]
    fig, axes = plt.subplots(1, len(exp.metrics), figsize=(3.2 * len(exp.metrics), 3.2), squeeze=False)
    x = np.arange(len(variants))
    for ax, metric in zip(axes[0], exp.metrics):
        means = [per_variant[v][metric]["mean"] if metric in per_variant[v] else np.nan for v in variants]
        stds = [(per_variant[v][metric]["std"] or 0.0) if metric in per_variant[v] else 0.0 for v in variants]
        ax.bar(x, means, yerr=stds, capsize=4, color="#7aa6c2", edgecolor="#2d5d7b")
        for i, v in enumerate(variants):
            vals = per_variant[v].get(metric, {}).get("values", [])
            ax.scatter(np.full(len(vals), i), vals, s=10, color="black", zorder=3)
        ax.set_xticks(x, variants, rotation=30, ha="right")
        ax.set_title(f"{metric} {'↑' if higher_is_better(metric) else '↓'}")
        spans = [(min(per_variant[v][metric]["values"] + [m - sd]), max(per_variant[v][metric]["values"] + [m + sd]))
                 for v, m, sd in zip(variants, means, stds) if metric in per_variant[v]]
        if spans:  # zoom on the values (bars from zero hide differences of a few per cent)
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
            pad = 0.2 * (hi - lo) + 1e-3 * max(abs(hi), 1e-6)
            ax.set_ylim(max(0.0, lo - pad), hi + pad)
    fig.suptitle(f"{exp.name}: {name} (mean ± std over seeds; y axes zoomed on the values)")
    fig.tight_layout()
    return _save(fig, path)


SMOOTH = 5  # logged values averaged in the learning curves (each is one batch's loss: noisy)


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start, same length)."""
    csum = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_learning_curves(exp: Experiment, path: Path) -> Path:
    """Training loss over steps per variant: mean over seeds, min–max band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant in exp.variants:
        curves = [learning_curve(run_dir(exp, c)) for c in exp.cells() if c.variant == variant]
        curves = [c for c in curves if c[0].size]
        if not curves:
            continue
        common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
        if not common:
            continue
        vals = np.stack([_running_mean(np.interp(common, s, v), SMOOTH) for s, v in curves])
        line, = ax.plot(common, vals.mean(0), label=f"{variant} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(common, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(LOSS_KEY)
    ax.set_title(f"{exp.name}: learning curves (running mean of {SMOOTH} logged values;\n"
                 "mean over seeds, min–max band)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_tae_frames(exp: Experiment, name: str, runs: list[dict[str, Any]], path: Path) -> Path:
    """TAE of frame pair (k, k+1) over k per variant (mean over sequences, then seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant in exp.variants:
        curves = [r["eval"][name]["tae_curve"] for r in runs if r["variant"] == variant and name in r["eval"]]
        if not curves:
            continue
        arr = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=np.float64)
        ax.plot(np.arange(arr.shape[1]), np.nanmean(arr, 0), marker=".", label=f"{variant} (n={len(curves)})")
    ax.set_xlabel("frame index k (pair k → k+1)")
    ax.set_ylabel("TAE ×100")
    ax.set_title(f"{exp.name}: TAE over the frame index, {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_report(exp: Experiment) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots into the output folder; returns the paths."""
    runs, missing = collect_results(exp)
    summary = summarise(exp, runs)
    out = exp.output
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    if runs:
        for name, per_variant in summary.items():
            if per_variant:
                plots.append(plot_bars(exp, name, per_variant, out / f"bars_{name}.png"))
        plots.append(plot_learning_curves(exp, out / "learning_curves.png"))
        if "TAE" in exp.metrics:
            for name in exp.eval_sets:
                plots.append(plot_tae_frames(exp, name, runs, out / f"tae_frames_{name}.png"))
    result = {
        "experiment": exp.name, "file": str(exp.path), "description": exp.description,
        "budget": exp.budget, "seeds": exp.seeds, "variants": list(exp.variants), "metrics": exp.metrics,
        "eval_sets": list(exp.eval_sets), "primary": exp.primary,
        "summary": summary, "comparisons": comparisons(exp, summary), "paper": exp.paper,
        "unsupported": exp.unsupported, "missing": missing,
        "runs": [{"variant": r["variant"], "seed": r["seed"], "steps": r["steps"],
                  "train_seconds": r["train_seconds"],
                  "metrics": {s: e["metrics"] for s, e in r["eval"].items()}} for r in runs],
        "plots": [p.name for p in plots],
    }
    paths = [atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n"),
             atomic_write_text(out / "results.md", format_markdown(exp, summary, runs, missing, plots) + "\n")]
    return [*paths, *plots]
