"""Run an experiment's grid: render its corpora once, then for each variant × seed one
``gemdepth fit`` into ``<output>/runs/<variant>/seed<k>/`` and the same held-out evaluation.

Resumable at two levels: a run whose ``result.json`` exists (written atomically after its
evaluation) is never trained again; a run with a ``checkpoints/last.ckpt`` but no result resumes
training from it (Lightning restores optimiser, scheduler and step), then evaluates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gemdepth.atomic import atomic_write_text
from gemdepth.experiment.config import Cell, Experiment, deep_merge

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_FILE",
    "RunBusy",
    "RunFailed",
    "SweepInterrupted",
    "build_run_config",
    "corpus_dir",
    "install_interrupt_handler",
    "prepare_corpora",
    "run_cell",
    "run_dir",
    "run_lock",
]

RESULT_FILE = "result.json"  # the finished-run marker (written atomically after evaluation)
TRAINED_FILE = "trained.json"  # training reached its budget (evaluation may still be missing)


class RunFailed(RuntimeError):
    """One run of the grid failed (training or evaluation); the message says which and where."""


class RunBusy(RuntimeError):
    """Another live process holds the run's lock (the same cell started twice)."""


LOCK_FILE = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def run_lock(run: Path, key: str) -> Iterator[None]:
    """Hold ``<run>/.lock`` (``host pid``, created exclusively) while a cell trains and evaluates,
    so two processes (a doubly submitted array task) never write one run; a lock left by a dead
    process on this host is taken over."""
    import socket

    lock = run / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                host, _, pid = lock.read_text().strip().rpartition(" ")
            except FileNotFoundError:  # released meanwhile
                continue
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise RunBusy(f"{key}: being run by process {pid} on {host or '?'} ({lock}); skipped "
                          f"(delete {lock} if that process is gone)") from None
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM during a run's training: ``last.ckpt`` is saved, the sweep stops."""


_SIGINT = {"seen": False}


def install_interrupt_handler() -> None:
    """Remember a Ctrl-C before Lightning turns it into a graceful stop (exit code 1), so the
    sweep stops instead of moving on to the next run."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        _SIGINT["seen"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def corpus_dir(exp: Experiment, name: str) -> Path:
    """Where corpus ``name`` of the experiment is rendered."""
    return exp.output / "shards" / name


def run_dir(exp: Experiment, cell: Cell) -> Path:
    """The run folder of one cell."""
    return exp.output / "runs" / cell.variant / f"seed{cell.seed}"


def eval_set_dir(exp: Experiment, name: str) -> Path:
    """Shards of evaluation set ``name`` (a rendered corpus or a given folder)."""
    where = exp.eval_sets[name]
    return corpus_dir(exp, where) if where in exp.corpus else Path(where)


# --------------------------------------------------------------------------- corpora
def _corpus_args(spec: dict[str, Any]) -> dict[str, Any]:
    from gemdepth.data.synthetic import SynthConfig

    size = tuple(spec.get("size", [112, 112]))
    config = SynthConfig(height=size[0], width=size[1], frames=spec.get("frames", 32),
                         kind=spec.get("kind", "mixed"), camera=spec.get("camera", "smooth"))
    return {"sequences": spec["sequences"], "frames": spec.get("frames", 32), "clip_length": spec.get("clip_length", 8),
            "size": size, "seed": spec.get("seed", 0), "pose_free": bool(spec.get("pose_free", False)),
            "clips_per_shard": spec.get("clips_per_shard", 8), "config": config}


def prepare_corpora(exp: Experiment, workers: int = 1) -> dict[str, Path]:
    """Render every corpus of the experiment that is not already there (deterministic per seed)."""
    from gemdepth.data.synthetic import make_synthetic_corpus

    paths = {}
    for name, spec in exp.corpus.items():
        out = corpus_dir(exp, name)
        marker = out.with_name(name + ".done.json")
        paths[name] = out
        want = json.dumps(spec, sort_keys=True)
        if marker.is_file() and marker.read_text() == want and (out / "index.json").is_file():
            continue
        log.info("rendering corpus %s into %s", name, out)
        print(f"[experiment] rendering corpus {name!r} ({spec['sequences']} sequences, "
              f"camera {spec.get('camera', 'smooth')}) into {out}", flush=True)
        args = _corpus_args(spec)
        try:
            make_synthetic_corpus(out, workers=workers, progress=False, resume=not marker.is_file(), **args)
        except ValueError:  # an earlier, different corpus in the folder: start over
            make_synthetic_corpus(out, workers=workers, progress=False, resume=False, **args)
        atomic_write_text(marker, want)
    return paths


# --------------------------------------------------------------------------- run config
def _divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` not above ``cap`` (checkpoints land exactly on the last step)."""
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def build_run_config(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """The complete ``gemdepth fit`` config of one run: base files, then the experiment's
    ``overrides``, then the variant's, then what the runner owns (seed, budget, paths, loggers)."""
    cfg: dict[str, Any] = {}
    for base in exp.base:
        cfg = deep_merge(cfg, yaml.safe_load(base.read_text()) or {})
    cfg = deep_merge(cfg, exp.overrides)
    cfg = deep_merge(cfg, exp.variants[cell.variant])
    run = run_dir(exp, cell)
    cfg["seed_everything"] = cell.seed
    trainer = cfg.setdefault("trainer", {})
    for key in ("max_steps", "max_time", "max_epochs", "val_check_interval"):
        trainer.pop(key, None)
    if "max_steps" in exp.budget:
        steps = exp.budget["max_steps"]
        trainer["max_steps"] = steps
        every = exp.budget.get("checkpoint_every") or _divisor_at_most(steps, max(1, steps // 4))
    else:
        trainer["max_time"] = exp.budget["max_time"]
        trainer["max_steps"] = -1
        every = exp.budget.get("checkpoint_every", 50)
    trainer["max_epochs"] = -1
    trainer["limit_val_batches"] = 0  # evaluation is the runner's, on whole held-out sequences
    trainer["num_sanity_val_steps"] = 0
    trainer["default_root_dir"] = str(run)
    trainer["logger"] = [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(run), "name": "tb", "version": 0, "default_hp_metric": False}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(run), "name": "csv", "version": 0}},
    ]
    callbacks = [cb for cb in trainer.get("callbacks") or []
                 if not str(cb.get("class_path", "")).endswith("ModelCheckpoint")]
    callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(run / "checkpoints"), "save_last": True, "enable_version_counter": False,
        "save_top_k": 0, "every_n_train_steps": int(every)}})
    trainer["callbacks"] = callbacks
    data = cfg.setdefault("data", {})
    if exp.train:
        data["train_sources"] = {name: {"path": str(corpus_dir(exp, name))} for name in exp.train}
    held_out = {exp.primary: {"path": str(eval_set_dir(exp, exp.primary)), "sky": "invalid"}}
    data["val_sources"] = held_out
    data["test_sources"] = held_out
    return cfg


# --------------------------------------------------------------------------- one run
def _checkpoint_step(path: Path) -> int:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def _variant_hparams(cfg: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """Flat switches of a run for TensorBoard's HParams view."""
    plugins = {p.get("name"): p for p in (cfg.get("model", {}).get("model", {}) or {}).get("plugins", []) or []}
    astt = plugins.get("astt", {})
    gem = plugins.get("gem", {})
    return {
        "variant": cell.variant, "seed": cell.seed, "gem": "gem" in plugins, "astt": "astt" in plugins,
        "spatial": bool("astt" in plugins and astt.get("spatial", True)),
        "temporal": bool("astt" in plugins and astt.get("temporal", True)),
        "position": str(astt.get("position", "early")) if astt else "none",
        "pose_prob": float(gem.get("pose_prob", 0.5)) if gem else 0.0,
    }


def _write_hparams(exp: Experiment, cell: Cell, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """One TensorBoard hparams record per run under ``<output>/hparams`` (the grid in HParams)."""
    from torch.utils.tensorboard import SummaryWriter

    folder = exp.output / "hparams" / cell.variant / f"seed{cell.seed}"
    if folder.exists():
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")


def run_cell(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its result (read back if already done)."""
    run = run_dir(exp, cell)
    done = run / RESULT_FILE
    cfg = build_run_config(exp, cell)
    if done.is_file():
        result = json.loads(done.read_text())
        print(f"[experiment] {cell.key}: finished earlier ({done}); not retrained", flush=True)
        used = run / "config.yaml"
        if used.is_file() and yaml.safe_load(used.read_text()) != cfg:
            print(f"[experiment] warning: {cell.key} was trained with another config than {exp.path} gives now; "
                  f"delete {run} to train it again", flush=True)
        return result
    run.mkdir(parents=True, exist_ok=True)
    with run_lock(run, cell.key):
        return _train_and_evaluate(exp, cell, cfg)


def _train_and_evaluate(exp: Experiment, cell: Cell, cfg: dict[str, Any]) -> dict[str, Any]:
    """The body of :func:`run_cell` (under the run's lock)."""
    run = run_dir(exp, cell)
    done = run / RESULT_FILE
    if done.is_file():  # finished by another process between the check and the lock
        return json.loads(done.read_text())
    config_path = run / "config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(cfg, sort_keys=False))
    last = run / "checkpoints" / "last.ckpt"
    trained = run / TRAINED_FILE
    seconds = 0.0
    if not trained.is_file():
        from gemdepth.training.cli import run_lightning_cli

        args = ["fit", "-c", str(config_path)]
        resumed_from = None
        if last.is_file():
            resumed_from = _checkpoint_step(last)
            args += ["--ckpt_path", str(last)]
            print(f"[experiment] {cell.key}: resuming training from {last} (step {resumed_from})", flush=True)
        else:
            print(f"[experiment] {cell.key}: training ({_budget_text(exp)})", flush=True)
        start = time.perf_counter()
        code = run_lightning_cli(args)
        seconds = time.perf_counter() - start
        if code == 128 + 15 or _SIGINT["seen"]:  # SIGTERM (SigtermCheckpoint saved last.ckpt) or Ctrl-C
            raise SweepInterrupted(f"{cell.key}: interrupted at step "
                                   f"{_checkpoint_step(last) if last.is_file() else 0}; re-run the same "
                                   "command to resume from its last.ckpt")
        if code != 0 or not last.is_file():
            raise RunFailed(f"{cell.key}: gemdepth fit -c {config_path} failed (exit code {code}); "
                            f"see the log above; re-running the experiment resumes it")
        atomic_write_text(trained, json.dumps({"steps": _checkpoint_step(last), "seconds": round(seconds, 1),
                                               "resumed_from_step": resumed_from}, indent=2) + "\n")
    train_info = json.loads(trained.read_text())
    print(f"[experiment] {cell.key}: evaluating {last} on {', '.join(exp.eval_sets)}", flush=True)
    try:
        evals = evaluate_run(exp, cfg, last)
    except Exception as exc:
        raise RunFailed(f"{cell.key}: evaluation of {last} failed: {type(exc).__name__}: {exc}") from exc
    hparams = _variant_hparams(cfg, cell)
    result = {
        "variant": cell.variant, "seed": cell.seed, "steps": train_info["steps"],
        "train_seconds": train_info["seconds"], "hparams": hparams,
        "eval": evals, "config": str(config_path), "checkpoint": str(last)
    }
    flat = {f"{s}/{m}": v for s, r in evals.items() for m, v in r["metrics"].items()}
    _write_hparams(exp, cell, hparams, flat)
    atomic_write_text(done, json.dumps(result, indent=2) + "\n")
    print(f"[experiment] {cell.key}: done " + ", ".join(
        f"{k} {v:.4f}" for k, v in evals[exp.primary]["metrics"].items()), flush=True)
    return result


def _budget_text(exp: Experiment) -> str:
    if "max_steps" in exp.budget:
        return f"{exp.budget['max_steps']} steps"
    return f"wall clock {exp.budget['max_time']}"


# held-out sequences by shard folder: decoded once per process, shared by every run of a sweep
_SEQUENCE_CACHE: dict[str, list[dict]] = {}


def evaluate_run(exp: Experiment, cfg: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    """Every evaluation set of the experiment on one checkpoint (same protocol for all runs)."""
    from lightning.pytorch import seed_everything

    from gemdepth.data import read_sequences
    from gemdepth.experiment.evaluate import evaluate_model
    from gemdepth.weights import load_model

    window = int(cfg.get("data", {}).get("clip_length", 8))
    model = load_model(ckpt)
    out = {}
    for name in exp.eval_sets:
        folder = str(eval_set_dir(exp, name).resolve())
        if folder not in _SEQUENCE_CACHE:
            _SEQUENCE_CACHE[folder] = list(read_sequences(folder))
        seed_everything(0, verbose=False)  # stochastic parts (if any) draw the same for every run
        out[name] = evaluate_model(model, _SEQUENCE_CACHE[folder], exp.metrics, exp.max_depth, window)
    return out


def set_threads(threads: int) -> None:
    """Torch (intra- and inter-op) threads of this process: one per run on a shared machine."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set once in this process (e.g. a second sweep in the tests)
        pass
    os.environ["OMP_NUM_THREADS"] = str(threads)  # data-loader workers started from here inherit it
