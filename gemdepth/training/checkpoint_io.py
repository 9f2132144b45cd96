"""Checkpoints written so that a kill, a full disk or a pre-emption never costs the last good one.

Lightning's default save serialises into memory and hands the bytes to an fsspec transaction,
which for local files writes a temporary file in ``$TMPDIR`` and ``shutil.move``\\ s it into place.
When ``$TMPDIR`` is another filesystem (a tmpfs ``/tmp``, a separate data volume: common on
clusters) the move degrades to a copy that truncates the old ``last.ckpt`` first, so a kill -9
mid-save leaves a 0-byte file and a full disk a truncated one under the final name.
:class:`AtomicCheckpointIO` writes beside the final name instead, flushes and fsyncs the data,
renames it over the target (atomic within one filesystem) and fsyncs the folder, so the
checkpoint under the final name is always either the old one or the complete new one, and
nothing is ever written to ``$TMPDIR``. Remote (fsspec URL) paths keep Lightning's behaviour.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gemdepth.atomic import TEMP_MARK, atomic_path, fsync_dir

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "TEMP_MARKER"]

# Temporary files are ".<final name>.tmp-<random>" in the checkpoint's own folder.
TEMP_MARKER = TEMP_MARK




def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files an earlier, killed save of ``path`` left beside it."""
    for stale in path.parent.glob(f".{path.name}{TEMP_MARKER}*"):
        try:
            stale.unlink()
            log.info("removed %s, left by an interrupted checkpoint save", stale)
        except OSError as err:
            log.warning("could not remove %s (left by an interrupted checkpoint save): %s", stale, err)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a fsynced temporary file beside ``path`` and a rename
    (:func:`gemdepth.atomic.atomic_path`).

    On any failure (full disk, an exception, a signal that unwinds Python) the temporary file is
    removed and ``path``, if it existed, is untouched; what a kill -9 leaves is removed by the
    next save of the same name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise OSError(
                err.errno, f"could not write checkpoint {path}: {err.strerror or err}; the previous checkpoint "
                "under that name (if any) is intact. Free space or choose another checkpoint folder "
                "(ModelCheckpoint dirpath / --trainer.default_root_dir)"
            ) from err
