"""Data: the clip schema, WebDataset shards, the synthetic corpus and the DataModule.

``VideoDataModule`` is imported lazily (it pulls in Lightning), so shard tools stay light.
"""

from __future__ import annotations

from typing import Any

from gemdepth.data.schema import ClipError, validate_clip
from gemdepth.data.shards import ShardError, read_clips, read_sequences, write_corpus

__all__ = [
    "ClipError",
    "ShardError",
    "VideoDataModule",
    "read_clips",
    "read_sequences",
    "validate_clip",
    "write_corpus",
]


def __getattr__(name: str) -> Any:
    if name == "VideoDataModule":
        from gemdepth.data.datamodule import VideoDataModule

        return VideoDataModule
    raise AttributeError(f"module 'gemdepth.data' has no attribute {name!r}")
