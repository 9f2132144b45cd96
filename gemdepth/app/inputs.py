"""What the app accepts as input (no Gradio here): an uploaded video, a zip of frames, or a
rendered sample; all checked against the app's limits before any model time is spent.

Every error is an :class:`~gemdepth.inference.readers.InputError` whose message names the
uploaded file (not the server's temporary path) and says what to do.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from gemdepth.inference.readers import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameSource,
    InputError,
    natural_key,
    open_source,
)

__all__ = ["AppLimits", "LimitedSource", "extract_frames_zip", "open_upload", "render_samples"]


@dataclass
class AppLimits:
    """What one request may ask for (``gemdepth app --max-frames/--max-res/--max-upload-mb``)."""

    max_frames: int = 600  # frames processed (after the stride)
    max_resolution: int | None = 1280  # longest side of the frames processed; larger ones are downscaled
    max_upload_mb: float = 500.0  # also Gradio's upload limit
    max_zip_files: int = 5000


class LimitedSource(FrameSource):
    """A source that refuses to yield more than ``limit`` frames (for videos whose container
    does not tell the frame count); other attributes are the wrapped source's."""

    def __init__(self, source: FrameSource, limit: int, shown_name: str) -> None:
        self._source, self._limit, self._shown = source, int(limit), shown_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, frame in enumerate(self._source):
            if i >= self._limit:
                raise InputError(
                    f"{self._shown}: longer than this app's limit of {self._limit} frames; "
                    f"use a larger frame stride or trim the video"
                )
            yield frame


def _shown(message: str, path: Path, name: str) -> str:
    """The message with the server-side path replaced by the name the user uploaded."""
    return message.replace(str(path), name)


def extract_frames_zip(path: Path, dest: Path, limits: AppLimits, shown_name: str, stride: int = 1) -> Path:
    """The images of a zip (any folder depth, natural order of their paths) copied into
    ``dest`` as ``000000.png``, … (our own names: nothing in the archive picks a path);
    other files are ignored. Returns ``dest``."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{shown_name}: not a readable zip archive ({err})") from err
    with archive:
        members = [
            m for m in archive.infolist()
            if not m.is_dir()
            and PurePosixPath(m.filename).suffix.lower() in IMAGE_EXTENSIONS
            and not any((part.startswith(".") and part != "..") or part == "__MACOSX"
                        for part in PurePosixPath(m.filename).parts)  # hidden files, macOS resource forks
        ]
        if not members:
            raise InputError(
                f"{shown_name}: the zip holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"zip a folder of frames, or upload a video"
            )
        if len(members) > limits.max_zip_files:
            raise InputError(f"{shown_name}: {len(members)} images, more than this app's limit of {limits.max_zip_files}")
        selected = -(-len(members) // max(stride, 1))
        if selected > limits.max_frames:  # before unpacking anything
            raise InputError(
                f"{shown_name}: {selected} frames at stride {stride}, more than this app's limit of "
                f"{limits.max_frames}; use a frame stride of at least {-(-len(members) // limits.max_frames)}"
            )
        unpacked = sum(m.file_size for m in members)
        if unpacked > limits.max_upload_mb * 4 * 2**20:
            raise InputError(
                f"{shown_name}: its images unpack to {unpacked / 2**20:.0f} MB, more than this app's limit of "
                f"{limits.max_upload_mb * 4:.0f} MB"
            )
        members.sort(key=lambda m: natural_key(m.filename))
        dest.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(members):
            target = dest / f"{i:06d}{PurePosixPath(member.filename).suffix.lower()}"
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "upload"
    return stem[:80]


def open_upload(
    path: str | Path,
    workdir: Path,
    limits: AppLimits,
    stride: int = 1,
    folder_fps: float = 30.0,
) -> FrameSource:
    """Open an uploaded file as a checked frame source within ``limits``.

    A video (``.mp4``, ``.mov``, …) is opened as such; a ``.zip`` is unpacked into ``workdir``
    as a frame folder; anything else is refused with a message naming the accepted types.
    """
    path = Path(path)
    shown = path.name
    suffix = path.suffix.lower()
    if stride < 1:
        raise InputError(f"frame stride must be at least 1, got {stride}")
    try:
        if suffix == ".zip":
            frames = extract_frames_zip(path, workdir / _safe_name(path.name), limits, shown, stride)
            source = open_source(frames, stride=stride, max_resolution=limits.max_resolution, folder_fps=folder_fps)
        elif suffix in VIDEO_EXTENSIONS:
            source = open_source(path, stride=stride, max_resolution=limits.max_resolution)
        else:
            raise InputError(
                f"{shown}: not a video or a zip of frames; upload a video ({', '.join(VIDEO_EXTENSIONS)}) "
                f"or a .zip of images ({', '.join(IMAGE_EXTENSIONS)})"
            )
    except InputError as err:
        raise InputError(_shown(str(err), path, shown)) from None
    except ValueError as err:  # sampling settings
        raise InputError(f"{shown}: {err}") from None
    count = source.frame_count
    if count is not None and count > limits.max_frames:
        need = -(-count * stride // limits.max_frames)
        raise InputError(
            f"{shown}: {count} frames at stride {stride}, more than this app's limit of {limits.max_frames}; "
            f"use a frame stride of at least {need} or trim the video"
        )
    if count is None:
        return LimitedSource(source, limits.max_frames, shown)
    return source


def render_samples(folder: Path, size: tuple[int, int] = (168, 224), frames: int = 48, seed: int = 7) -> dict[str, Path]:
    """Render the built-in samples with the synthetic renderer (a room and an open scene) as
    mp4 files in ``folder``; returns ``{label: path}``. Seeded: the same videos every time."""
    from gemdepth.data.synthetic import SynthConfig, render_sequence
    from gemdepth.demo import write_video

    samples: dict[str, Path] = {}
    for i, kind in enumerate(("room", "open")):
        path = folder / f"synthetic_{kind}.mp4"
        if not path.is_file():
            seq = render_sequence(np.random.SeedSequence([seed, i]),
                                  SynthConfig(height=size[0], width=size[1], frames=frames, kind=kind))
            write_video(seq["rgb"], path, fps=12)
        samples[f"synthetic {kind} ({frames} frames, {size[1]}×{size[0]})"] = path
    return samples
