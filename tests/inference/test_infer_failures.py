"""``gemdepth infer`` when its outputs cannot be written (``--out`` a file, a read-only folder, a
full disk): a message naming the path and the cause, no traceback, the other inputs still run,
a nonzero exit, and nothing partial left behind (no temporary, no half-renamed run)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from infer_fakes import make_frames, write_folder

from gemdepth.inference import writers
from gemdepth.inference.cli import main

OUTPUTS = ["cameras.json", "cameras.npz", "depth.mp4", "depth.npz", "depth_png16", "points.ply", "run.json"]


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    """Two frame folders, ``first`` and ``second`` (more than one window each)."""
    return [write_folder(tmp_path / name, make_frames(26, 20, 30, seed=i)) for i, name in enumerate(["first", "second"])]


def _infer(capsys: pytest.CaptureFixture[str], ckpt: Path, out: Path, *inputs: Path) -> tuple[int, str]:
    argv = [*map(str, inputs), "--ckpt", str(ckpt), "--out", str(out), "--input-size", "28", "--window", "16",
            "--overlap", "6", "--interp", "4", "--png16", "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _leftovers(root: Path) -> list[str]:
    """Every hidden (temporary) file or folder under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def test_out_is_an_existing_file(tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys) -> None:
    out = tmp_path / "results"
    out.write_text("not a folder")
    code, err = _infer(capsys, mini_checkpoint, out, *clips)
    assert code == 2 and f"--out {out} is a file, not a folder" in err
    assert out.read_text() == "not a folder"


def test_out_below_a_file(tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys) -> None:
    (tmp_path / "afile").write_text("x")
    code, err = _infer(capsys, mini_checkpoint, tmp_path / "afile" / "results", *clips)
    assert code == 2 and "afile is a file, not a folder" in err


def test_read_only_out_is_refused_before_any_work(
    tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root writes to it anyway)
        out.chmod(0o555)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))
    try:
        code, err = _infer(capsys, mini_checkpoint, out, *clips)
    finally:
        out.chmod(0o755)
    assert code == 2 and f"--out {out}: {out} is not writable (permission denied)" in err
    assert list(out.iterdir()) == []


def test_an_output_folder_taken_by_a_file_skips_only_that_input(
    tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "first").write_text("in the way")
    code, err = _infer(capsys, mini_checkpoint, out, *clips)
    assert code == 1
    assert f"first: cannot write {out / 'first'}: it exists and is not a folder; move it away" in err
    assert (out / "first").read_text() == "in the way"
    assert sorted(p.name for p in (out / "second").iterdir()) == OUTPUTS  # the next input still ran
    assert _leftovers(out) == []


def _enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["frames", "npz", "video", "png", "run_json"])
def test_full_disk_fails_one_input_cleanly_and_runs_the_next(
    tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ENOSPC injected where each kind of output is written, for the first input only."""
    from gemdepth.inference import pipeline

    out = tmp_path / "results"
    # (object, attribute, the path a call writes, taken from its arguments)
    owner, name, path_of = {
        "frames": (writers._Spool, "add", lambda a: a[0].path),  # while frames stream in
        "npz": (writers, "_write_npz", lambda a: a[0]),  # packing the npz at the end
        "video": (writers.DepthVideoWriter, "finish", lambda a: a[0].tmp),  # flushing the encoder
        "png": (writers.Png16Writer, "add", lambda a: a[0].tmp),
        "run_json": (pipeline, "atomic_write_text", lambda a: a[0]),
    }[where]
    original = getattr(owner, name)
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        if Path(path_of(args)).parent.name == "first":
            calls["n"] += 1
            if where != "frames" or calls["n"] > 5:  # frames: a few are written first
                _enospc()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    code, err = _infer(capsys, mini_checkpoint, out, *clips)
    assert code == 1
    assert f"first: cannot write {out / 'first'}: No space left on device; free some space" in err
    assert sorted(p.name for p in (out / "second").iterdir()) == OUTPUTS  # the next input ran
    assert _leftovers(out) == []  # no temporary of the failed run is left
    if where == "run_json":  # the outputs were complete, only run.json failed: no run.json claims success
        assert not (out / "first" / "run.json").exists()
    else:  # the folder the failed run created is gone again
        assert not (out / "first").exists()


def test_full_disk_on_a_rerun_keeps_the_earlier_complete_run(
    tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results"
    assert _infer(capsys, mini_checkpoint, out, clips[0])[0] == 0
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / "first").iterdir()}
    monkeypatch.setattr(writers.DepthVideoWriter, "finish", _enospc)  # the last writer to finish
    code, err = _infer(capsys, mini_checkpoint, out, clips[0])
    assert code == 1 and "No space left on device" in err
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / "first").iterdir()}
    assert after == before  # nothing renamed over the complete earlier run
    assert _leftovers(out) == []


def test_permission_denied_inside_out(
    tmp_path: Path, mini_checkpoint: Path, clips: list[Path], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = writers.Png16Writer.__init__

    def denied(self, folder, scale):  # noqa: ANN001, ANN202
        if Path(folder).name == "first":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(folder) / ".depth_png16.partial"))
        original(self, folder, scale)

    monkeypatch.setattr(writers.Png16Writer, "__init__", denied)
    out = tmp_path / "results"
    code, err = _infer(capsys, mini_checkpoint, out, *clips)
    assert code == 1
    assert f"first: cannot write {out / 'first' / '.depth_png16.partial'}: Permission denied; choose a writable" in err
    assert not (out / "first").exists() and _leftovers(out) == []
    run = json.loads((out / "second" / "run.json").read_text())
    assert run["frames"] == 26 and run["warnings"] == []
    with np.load(out / "second" / "depth.npz") as z:
        assert z["depth"].shape == (26, 20, 30)


def test_outputs_get_the_permissions_of_new_files(tmp_path: Path) -> None:
    """Every output (also run.json, written through a temporary file) is ``0666 & ~umask``."""
    import stat

    from infer_fakes import FakeVideoModel

    from gemdepth.inference import InferenceOptions, OutputOptions, open_source, run_source

    old = os.umask(0o027)
    try:
        run_source(FakeVideoModel().eval(), open_source(write_folder(tmp_path / "clip", make_frames(5, 20, 30))),
                   tmp_path / "out", InferenceOptions(input_size=28), OutputOptions(progress=False, png16=True))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "depth.npz", "depth.mp4", "cameras.npz", "000004.png"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o640)}
