"""Checkpoint saves never destroy the previous checkpoint and never write to $TMPDIR."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import gemdepth.training.checkpoint_io as checkpoint_io
from gemdepth.training.checkpoint_io import TEMP_MARKER, AtomicCheckpointIO, atomic_torch_save
from gemdepth.training.cli import use_atomic_checkpoints


def _old_checkpoint(path: Path) -> dict:
    ckpt = {"global_step": 7, "state_dict": {"w": torch.arange(10.0)}}
    torch.save(ckpt, path)
    return ckpt


def test_save_writes_beside_the_target_not_in_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    target = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "w": torch.ones(4)}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 3
    assert list(tmpdir.iterdir()) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_mid_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    old = _old_checkpoint(target)

    def disk_full(obj: object, fh) -> None:  # noqa: ANN001
        fh.write(b"PK\x03\x04 partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.ckpt.*previous checkpoint.*intact"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 8}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == old["global_step"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


_SLOW_SAVER = textwrap.dedent(
    """
    import sys, time, torch
    from gemdepth.training.checkpoint_io import atomic_torch_save

    class Slow:
        def __init__(self, fh):
            self.fh = fh
        def write(self, data):
            time.sleep(0.002)
            return self.fh.write(data)
        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_save = torch.save
    torch.save = lambda obj, fh: real_save(obj, Slow(fh))
    atomic_torch_save({"global_step": 99, "w": torch.randn(4_000_000)}, sys.argv[1])
    """
)


def test_kill_9_during_a_save_leaves_the_old_checkpoint_loadable(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    old = _old_checkpoint(target)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVER, str(target)])
    try:
        deadline = time.time() + 60
        temps: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            temps = [p for p in tmp_path.glob(f".last.ckpt{TEMP_MARKER}*") if p.stat().st_size > 0]
            if temps:
                break
            time.sleep(0.01)
        assert temps, "the save never started writing its temporary file"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    loaded = torch.load(target, weights_only=True)
    assert loaded["global_step"] == old["global_step"]
    assert torch.equal(loaded["state_dict"]["w"], old["state_dict"]["w"])
    # the next save cleans up what the killed one left, and replaces the checkpoint
    atomic_torch_save({"global_step": 100}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["global_step"] == 100


def test_trainers_of_the_cli_use_the_atomic_writer(tmp_path: Path) -> None:
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False)
    use_atomic_checkpoints(trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
