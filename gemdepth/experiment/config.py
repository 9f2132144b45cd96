"""The experiment file: a base recipe, variants as config overrides, seeds, a budget, corpora and
an evaluation set, read and checked into an :class:`Experiment`.

Every error names the file and the key (``experiments/table4.yaml: variants.host: ...``) and
says what is expected, before anything is rendered or trained.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gemdepth.data.synthetic import CAMERA_FLAVOURS

__all__ = ["CORPUS_KEYS", "Cell", "Experiment", "ExperimentConfigError", "deep_merge", "load_experiment"]

TOP_KEYS = ("name", "description", "base", "output", "seeds", "budget", "threads", "corpus", "train",
            "eval", "overrides", "variants", "paper", "unsupported")
BUDGET_KEYS = ("max_steps", "max_time", "checkpoint_every")
CORPUS_KEYS = ("sequences", "frames", "clip_length", "size", "seed", "camera", "kind", "pose_free",
               "clips_per_shard")
EVAL_KEYS = ("sets", "primary", "metrics", "max_depth")
PAPER_KEYS = ("source", "columns", "values", "note")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a variant is a folder name
_MAX_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}$")  # Lightning's DD:HH:MM:SS


class ExperimentConfigError(ValueError):
    """A mistake in an experiment file; the message names the file and the key."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a variant trained with one seed."""

    variant: str
    seed: int

    @property
    def key(self) -> str:
        """``VARIANT/seedK``, the run's folder below ``runs/`` and the ``--only`` spelling."""
        return f"{self.variant}/seed{self.seed}"


@dataclass
class Experiment:
    """A checked experiment file (paths resolved against the file's folder)."""

    path: Path
    name: str
    description: str
    base: list[Path]
    output: Path
    seeds: list[int]
    budget: dict[str, Any]
    threads: int
    corpus: dict[str, dict[str, Any]]
    train: list[str]
    eval_sets: dict[str, str]  # name -> corpus name (rendered) or shard path
    primary: str
    metrics: list[str]
    max_depth: float
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    paper: dict[str, Any] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """The grid in run order: seeds outer, variants inner (an early stop leaves every variant
        with the same number of seeds)."""
        return [Cell(v, s) for s in self.seeds for v in self.variants]


def _err(path: Path, key: str, message: str) -> ExperimentConfigError:
    return ExperimentConfigError(f"{path}: {key}: {message}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``: mappings merge key by key, anything else
    (lists included, e.g. the plug-in list) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _mapping(path: Path, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(path, key, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _unknown(path: Path, key: str, value: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(value) - set(allowed))
    if extra:
        where = f"{key}.{extra[0]}" if key else extra[0]
        raise _err(path, where, f"unknown key; allowed: {', '.join(allowed)}")


def load_experiment(path: str | Path, output: str | Path | None = None) -> Experiment:
    """Read and check an experiment file; ``output`` replaces its ``output`` folder."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentConfigError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"{path}: not valid YAML: {exc}") from exc
    raw = _mapping(path, "(top level)", raw)
    _unknown(path, "", raw, TOP_KEYS)
    here = path.resolve().parent

    for key in ("base", "seeds", "budget", "variants", "eval"):
        if key not in raw:
            raise _err(path, key, "missing (every experiment needs base, seeds, budget, eval and variants)")

    base_raw = raw["base"] if isinstance(raw["base"], list) else [raw["base"]]
    base = []
    for i, item in enumerate(base_raw):
        if not isinstance(item, str):
            raise _err(path, f"base[{i}]", f"expected a config file path, got {item!r}")
        p = (here / item).resolve()
        if not p.is_file():
            raise _err(path, f"base[{i}]", f"{item!r} does not exist (paths are relative to {here})")
        base.append(p)

    seeds = raw["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds)) if seeds > 0 else seeds
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise _err(path, "seeds", f"expected a count (3) or a list of non-negative integers, got {raw['seeds']!r}")
    if len(set(seeds)) != len(seeds):
        raise _err(path, "seeds", f"repeated seed in {seeds}")

    budget = dict(_mapping(path, "budget", raw["budget"]))
    _unknown(path, "budget", budget, BUDGET_KEYS)
    if ("max_steps" in budget) == ("max_time" in budget):
        raise _err(path, "budget", "give exactly one of max_steps (optimiser steps) or max_time "
                   "(wall clock per run, DD:HH:MM:SS)")
    if "max_steps" in budget and (not isinstance(budget["max_steps"], int) or budget["max_steps"] < 1):
        raise _err(path, "budget.max_steps", f"expected a positive integer, got {budget['max_steps']!r}")
    if "max_time" in budget and not (isinstance(budget["max_time"], str) and _MAX_TIME.match(budget["max_time"])):
        raise _err(path, "budget.max_time", f"expected 'DD:HH:MM:SS' (e.g. '00:00:05:00'), got {budget['max_time']!r}")
    every = budget.get("checkpoint_every")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise _err(path, "budget.checkpoint_every", f"expected a positive integer (steps), got {every!r}")

    threads = raw.get("threads", 1)
    if not isinstance(threads, int) or threads < 1:
        raise _err(path, "threads", f"expected a positive integer (torch threads per run), got {threads!r}")

    corpus = {}
    for name, spec in _mapping(path, "corpus", raw.get("corpus") or {}).items():
        spec = _mapping(path, f"corpus.{name}", spec)
        _unknown(path, f"corpus.{name}", spec, CORPUS_KEYS)
        if not isinstance(spec.get("sequences"), int) or spec["sequences"] < 1:
            raise _err(path, f"corpus.{name}.sequences", f"expected a positive integer, got {spec.get('sequences')!r}")
        size = spec.get("size", [112, 112])
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 and v % 14 == 0
                                                                   for v in size)):
            raise _err(path, f"corpus.{name}.size", f"expected [H, W], positive multiples of 14, got {size!r}")
        if spec.get("camera", "smooth") not in CAMERA_FLAVOURS:
            raise _err(path, f"corpus.{name}.camera", f"expected one of {CAMERA_FLAVOURS}, got {spec['camera']!r}")
        corpus[str(name)] = dict(spec)

    train = raw.get("train", [])
    train = [train] if isinstance(train, str) else train
    if not isinstance(train, list) or not all(isinstance(t, str) for t in train):
        raise _err(path, "train", f"expected a list of corpus names, got {train!r}")
    for t in train:
        if t not in corpus:
            raise _err(path, "train", f"{t!r} is not a corpus of this file (corpus: {sorted(corpus)})")

    ev = _mapping(path, "eval", raw["eval"])
    _unknown(path, "eval", ev, EVAL_KEYS)
    sets_raw = ev.get("sets")
    if isinstance(sets_raw, list):
        sets_raw = {str(s): str(s) for s in sets_raw}
    if not isinstance(sets_raw, dict) or not sets_raw:
        raise _err(path, "eval.sets", "expected corpus names or {name: shard folder}, got " + repr(sets_raw))
    eval_sets: dict[str, str] = {}
    for name, where in sets_raw.items():
        if where in corpus:
            eval_sets[str(name)] = str(where)
        elif isinstance(where, str) and (here / where).exists():
            eval_sets[str(name)] = str((here / where).resolve())
        else:
            raise _err(path, f"eval.sets.{name}", f"{where!r} is neither a corpus of this file ({sorted(corpus)}) "
                       f"nor an existing shard folder (relative to {here})")
    primary = ev.get("primary", next(iter(eval_sets)))
    if primary not in eval_sets:
        raise _err(path, "eval.primary", f"{primary!r} is not one of eval.sets ({sorted(eval_sets)})")
    metrics = ev.get("metrics", ["AbsRel", "Delta1", "TAE"])
    from gemdepth.metrics import canonical_metric_name

    if not isinstance(metrics, list) or not metrics:
        raise _err(path, "eval.metrics", f"expected a list of metric names, got {metrics!r}")
    try:
        metrics = [canonical_metric_name(m) for m in metrics]
    except (KeyError, ValueError) as exc:
        raise _err(path, "eval.metrics", str(exc)) from exc
    max_depth = ev.get("max_depth", 80.0)
    if not isinstance(max_depth, (int, float)) or max_depth <= 0:
        raise _err(path, "eval.max_depth", f"expected a positive number (metres), got {max_depth!r}")

    overrides = _mapping(path, "overrides", raw.get("overrides") or {})
    variants_raw = _mapping(path, "variants", raw["variants"])
    if not variants_raw:
        raise _err(path, "variants", "no variant given")
    variants = {}
    for name, over in variants_raw.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise _err(path, f"variants.{name}", "a variant name is a folder name: letters, digits, _ . + -")
        variants[name] = dict(_mapping(path, f"variants.{name}", over if over is not None else {}))

    paper = _mapping(path, "paper", raw.get("paper") or {})
    _unknown(path, "paper", paper, PAPER_KEYS)
    if paper:
        cols = paper.get("columns")
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise _err(path, "paper.columns", f"expected a list of column names, got {cols!r}")
        for name, vals in _mapping(path, "paper.values", paper.get("values") or {}).items():
            if name not in variants:
                raise _err(path, f"paper.values.{name}", f"not a variant of this file ({sorted(variants)})")
            if not isinstance(vals, list) or len(vals) != len(cols):
                raise _err(path, f"paper.values.{name}", f"expected {len(cols)} numbers (one per paper.columns)")
    unsupported = _mapping(path, "unsupported", raw.get("unsupported") or {})

    out = Path(output) if output is not None else Path(raw.get("output", f"runs/{path.stem}"))
    return Experiment(
        path=path, name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")).strip(),
        base=base, output=out, seeds=list(seeds), budget=budget, threads=threads, corpus=corpus,
        train=list(train), eval_sets=eval_sets, primary=primary, metrics=metrics, max_depth=float(max_depth),
        overrides=dict(overrides), variants=variants, paper=dict(paper),
        unsupported={str(k): str(v) for k, v in unsupported.items()},
    )
