"""Interrupting a sweep: it stops (no moving on to the next run) and a re-run resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from experiment_helpers import REPO_ROOT, write_experiment

from gemdepth.experiment.cli import main


def test_sigterm_exit_code_stops_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``gemdepth fit`` returning 143 (SIGTERM, last.ckpt saved) ends the sweep with 130."""
    import gemdepth.training.cli as training_cli

    calls: list[list[str]] = []

    def sigtermed(args: list[str]) -> int:
        calls.append(args)
        return 128 + signal.SIGTERM

    monkeypatch.setattr(training_cli, "run_lightning_cli", sigtermed)
    path = write_experiment(tmp_path)
    assert main([str(path), "--no-report"]) == 130
    assert len(calls) == 1  # the other three runs were not started
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert not list((tmp_path / "out" / "runs").rglob("result.json"))


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (code {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_sweep_resumes_from_last_ckpt(tmp_path: Path) -> None:
    """SIGTERM during the first run's training (a scheduler's time limit) saves last.ckpt and
    stops the sweep; the same command then resumes that run from its step and finishes it."""
    steps = 200
    path = write_experiment(tmp_path, seeds=[0], budget={"max_steps": steps, "checkpoint_every": 10},
                            variants={"host": {"model": {"model": {"plugins": []}}}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "gemdepth", "experiment", str(path)]
    run = tmp_path / "out" / "runs" / "host" / "seed0"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run / "checkpoints" / "last.ckpt", proc)  # training is under way (first checkpoint saved)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    import torch

    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < steps
    assert not (run / "result.json").exists()
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming training from {run / 'checkpoints' / 'last.ckpt'} (step {step})" in again.stdout
    trained = json.loads((run / "trained.json").read_text())
    assert trained == {**trained, "steps": steps, "resumed_from_step": step}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["missing"] == []


def test_a_cell_held_by_a_live_process_is_skipped_and_a_stale_lock_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    import gemdepth.training.cli as training_cli
    from gemdepth.experiment.runner import LOCK_FILE

    calls: list[str] = []

    def no_fit(args: list[str]) -> int:  # training fails at once: only which cells start matters here
        calls.append(Path(args[args.index("-c") + 1]).parent.name)
        return 1

    monkeypatch.setattr(training_cli, "run_lightning_cli", no_fit)
    path = write_experiment(tmp_path, seeds=[0, 1], variants={"host": {"model": {"model": {"plugins": []}}}})
    runs = tmp_path / "out" / "runs" / "host"
    (runs / "seed0").mkdir(parents=True)
    (runs / "seed0" / LOCK_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")  # alive: this process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs / "seed1").mkdir(parents=True)
    (runs / "seed1" / LOCK_FILE).write_text(f"{socket.gethostname()} {dead.pid}\n")  # its process is gone
    assert main([str(path), "--no-report"]) == 1  # seed1's (fake) training failed
    assert calls == ["seed1"]
    out = capsys.readouterr().out
    assert f"host/seed0: being run by process {os.getpid()} on {socket.gethostname()}" in out
    assert (runs / "seed0" / LOCK_FILE).is_file() and not (runs / "seed1" / LOCK_FILE).exists()
