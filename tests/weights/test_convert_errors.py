"""``gemdepth convert`` on bad inputs: one clear line naming the file and the fix, a nonzero exit,
no traceback and nothing left behind; and the output gets ordinary permissions (not mkstemp's 0600)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gemdepth.atomic import atomic_write_text
from gemdepth.weights.convert import main

REPO = Path(__file__).resolve().parents[2]
VDA_YAML = REPO / "tests" / "configs" / "official_mini_vda.yaml"


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _convert(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_output_gets_the_permissions_of_a_new_file(official_dir: Path, tmp_path: Path, umask_027: int) -> None:
    dst = tmp_path / "m.safetensors"
    assert main([str(official_dir / "vda_mini.safetensors"), str(dst), "--model", str(VDA_YAML)]) == 0
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask_027  # 0640, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_atomic_text_gets_umask_permissions(tmp_path: Path, umask_027: int) -> None:
    path = atomic_write_text(tmp_path / "a.json", "{}")
    assert path.read_text() == "{}" and stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("missing.pth", "missing.pth: no such file; give the path"),
        ("junk.pth", "junk.pth is not a readable PyTorch checkpoint"),
        ("junk.safetensors", "junk.safetensors is not a readable .safetensors file"),
        ("notes.txt", "notes.txt: unknown checkpoint type '.txt'; expected .safetensors"),
    ],
)
def test_unreadable_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str], src: str, expected: str) -> None:
    for name in ("junk.pth", "junk.safetensors", "notes.txt"):
        (tmp_path / name).write_text("hello, not weights\n")
    dst = tmp_path / "out.safetensors"
    code, err = _convert(capsys, tmp_path / src, dst, "--model", VDA_YAML)
    assert code != 0 and expected in err and err.startswith("gemdepth convert: ")
    assert not dst.exists()


def test_unknown_model(official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _convert(capsys, official_dir / "vda_mini.safetensors", tmp_path / "o.safetensors", "--model", "vda-huge")
    assert code == 2 and "--model vda-huge: 'vda-huge' is neither a model preset" in err and "give a preset name" in err
    code, err = _convert(capsys, official_dir / "vda_mini.safetensors", tmp_path / "o.safetensors", "--model", "no.yaml")
    assert code == 2 and "no.yaml does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_keys_that_do_not_fit(official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _convert(capsys, official_dir / "dav2_mini.safetensors", tmp_path / "o.safetensors", "--model", VDA_YAML)
    first = err.splitlines()[0]
    assert code == 1 and "dav2_mini.safetensors does not fit --model" in first and "--partial" in first
    assert "model keys the checkpoint does not provide" in err  # the listing follows the one-line summary
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["suffix", "folder", "parent_is_file"])
def test_bad_outputs_are_refused_before_loading(
    official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.safetensors").mkdir()
    dst, expected = {
        "suffix": (tmp_path / "m.pth", "m.pth: the output must be a .safetensors file"),
        "folder": (tmp_path / "adir.safetensors", "adir.safetensors is a folder; give a file name"),
        "parent_is_file": (tmp_path / "afile" / "m.safetensors", "afile is a file, not a folder"),
    }[case]
    code, err = _convert(capsys, official_dir / "vda_mini.safetensors", dst, "--model", VDA_YAML)
    assert code == 2 and expected in err


def test_missing_output_folders_are_created(official_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "new" / "sub" / "m.safetensors"
    assert main([str(official_dir / "vda_mini.safetensors"), str(dst), "--model", str(VDA_YAML)]) == 0
    assert dst.is_file()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder(official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = _convert(capsys, official_dir / "vda_mini.safetensors", folder / "m.safetensors", "--model", VDA_YAML)
    finally:
        folder.chmod(0o755)
    assert code == 2 and "is not writable (permission denied)" in err and "ro" in err
    assert list(folder.iterdir()) == []


def test_unwritable_output_folder_is_refused_before_loading(
    official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same check as above where the tests run as root (who may write anywhere)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    code, err = _convert(capsys, official_dir / "vda_mini.safetensors", folder / "m.safetensors", "--model", VDA_YAML)
    assert code == 2 and f"cannot write {folder / 'm.safetensors'}: {folder} is not writable" in err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EACCES])
def test_write_failure_names_the_output_and_leaves_nothing(
    official_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    """A full disk (or a permission error) while the file is written: a message, no temp file, no output."""
    import safetensors.torch

    def failing_save(state, filename, metadata=None):  # noqa: ANN001, ANN202
        Path(filename).write_bytes(b"partial")
        raise OSError(errno_, os.strerror(errno_), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    dst = tmp_path / "m.safetensors"
    code, err = _convert(capsys, official_dir / "vda_mini.safetensors", dst, "--model", VDA_YAML)
    assert code == 1 and f"cannot write {dst}" in err and os.strerror(errno_) in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary file
