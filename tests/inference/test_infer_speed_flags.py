"""``gemdepth infer --max-memory / --no-encoder-cache / --compile``: same depth, recorded in run.json,
clear errors, and a compiler that cannot run leaves the run eager with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from infer_fakes import make_frames, write_folder

import gemdepth.compile as gcompile
from gemdepth.inference.cli import main



def _infer(folder: Path, ckpt: Path, out: Path, *extra: str) -> tuple[np.ndarray, dict]:
    code = main([str(folder), "--ckpt", str(ckpt), "--out", str(out), "--input-size", "28", "--no-progress",
                 "--no-video", "--no-ply", *extra])
    assert code == 0
    with np.load(out / folder.name / "depth.npz") as z:
        depth = z["depth"].astype(np.float32)
    return depth, json.loads((out / folder.name / "run.json").read_text())


def test_memory_budget_and_encoder_cache_keep_the_output(tmp_path: Path, mini_checkpoint: Path) -> None:
    folder = write_folder(tmp_path / "clip", make_frames(30, 30, 44))
    base, run = _infer(folder, mini_checkpoint, tmp_path / "a")
    assert run["encoder_cache"] is True and "max_memory_bytes" not in run
    other, run = _infer(folder, mini_checkpoint, tmp_path / "b", "--max-memory", "64KB", "--no-encoder-cache")
    assert run["encoder_cache"] is False and run["max_memory_bytes"] == 64 * 1024
    np.testing.assert_allclose(other, base, rtol=0, atol=2e-3 * np.abs(base).max())  # float16 storage


def test_bad_memory_budget_is_a_usage_error(tmp_path: Path, mini_checkpoint: Path, capsys) -> None:
    folder = write_folder(tmp_path / "clip", make_frames(3, 20, 30))
    code = main([str(folder), "--ckpt", str(mini_checkpoint), "--out", str(tmp_path / "o"), "--max-memory", "lots"])
    assert code == 2
    assert "--max-memory: cannot read the memory size 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "clip").exists()


def test_compile_without_a_compiler_warns_and_runs_eagerly(
    tmp_path: Path, mini_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcompile, "compile_unavailable", lambda device: "inductor on CPU needs a C++ compiler")
    folder = write_folder(tmp_path / "clip", make_frames(5, 30, 44))
    with pytest.warns(RuntimeWarning, match="needs a C\\+\\+ compiler.*running eagerly"):
        depth, run = _infer(folder, mini_checkpoint, tmp_path / "o", "--compile")
    assert run["compiled"] is False and depth.shape == (5, 30, 44)


def test_low_memory_sets_the_allocator_and_keeps_the_output(tmp_path: Path, mini_checkpoint: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import gemdepth.models.chunking as chunking

    calls: list[int] = []  # the real mallopt would stay set for the rest of this test process
    monkeypatch.setattr(chunking, "return_freed_memory", lambda threshold=4 * 2**20: calls.append(threshold) or True)
    folder = write_folder(tmp_path / "clip", make_frames(12, 30, 44))
    base, _ = _infer(folder, mini_checkpoint, tmp_path / "a")
    low, run = _infer(folder, mini_checkpoint, tmp_path / "b", "--low-memory")
    assert calls == [4 * 2**20] and run["low_memory"] is True
    np.testing.assert_array_equal(low, base)


def test_run_json_records_the_cpu_linear_path_and_both_paths_agree(tmp_path: Path, mini_checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gemdepth.models.cpu_linear import resolved_cpu_linear_backend, set_cpu_linear_backend

    folder = write_folder(tmp_path / "clip", make_frames(6, 30, 44))
    try:
        set_cpu_linear_backend("native")
        native, run = _infer(folder, mini_checkpoint, tmp_path / "a")
        assert run["cpu_linear"] == "native"
        set_cpu_linear_backend("onednn")
        fast, run = _infer(folder, mini_checkpoint, tmp_path / "b")
        assert run["cpu_linear"] == resolved_cpu_linear_backend()  # "onednn" where this torch has the op
    finally:
        set_cpu_linear_backend(None)
    np.testing.assert_allclose(fast, native, rtol=0, atol=2e-3 * np.abs(native).max())  # float16 storage
