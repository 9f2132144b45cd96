"""Atomic file writes with ordinary permissions.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a file written
through it and renamed into place is unreadable to the group and others even where every
other file the user writes is. :func:`temp_beside` makes the temporary file the way ``open``
makes a new file (mode ``0666 & ~umask``, decided by the kernel, no process-wide umask
juggling), exclusively (``O_EXCL``), in the destination's folder so the final rename never
crosses a filesystem. :func:`atomic_path` adds fsync + rename on success and removal on any
failure, so the final name holds either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TEMP_MARK",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "temp_beside",
    "unwritable_reason",
]

TEMP_MARK = ".tmp-"  # temporary names are ``.<final name>.tmp-<random>``


def temp_beside(path: str | os.PathLike[str]) -> Path:
    """Create (exclusively, mode ``0666 & ~umask``) and return an empty temporary file next to ``path``."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a unique temporary file next to {path}")  # pragma: no cover


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's data to disk (so a rename after a crash never exposes a hole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames, unlinks) to disk where the OS allows it (not Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it gets the permissions of a
    new file (also when the writer replaced it), is fsynced and renamed onto ``path``; on any
    error (or interruption) it is removed and the error re-raised."""
    path = Path(path)
    tmp = temp_beside(path)
    mode = tmp.stat().st_mode & 0o7777  # 0666 & ~umask, as the kernel made it
    try:
        yield tmp
        if tmp.stat().st_mode & 0o7777 != mode:  # a writer that recreates the file (safetensors: 0600)
            os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def unwritable_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why new files cannot be created in the existing ``folder`` (``None``: they can), checked
    up front so a command fails before any work with the cause named."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "it is on a read-only filesystem"
    return "permission denied"
