"""Lazy frame readers for video files (PyAV) and folders of images (Pillow).

A :class:`FrameSource` is probed when it is opened (the container or every image header is
read, and the first selected frame decoded), so a bad input fails with an :class:`InputError`
naming the file and the fix before any output is written. Iterating a source decodes one
frame at a time; frames are uint8 ``(H, W, 3)`` RGB.

Sampling options, the same for both kinds: ``start`` / ``end`` (source frame numbers, end
exclusive), ``stride`` (every n-th frame) or ``fps`` (target rate: stride = round(source fps /
fps), at least 1, as Video Depth Anything), and ``max_resolution`` (longest side, downscaled
with Pillow's bicubic filter, which antialiases).

A video that ends early (a truncated file whose index is at the front, such as a faststart
mp4 or an mkv, decodes cleanly up to the cut) or whose decoding fails after some frames is
not silently short: after each full pass the reader compares the frames decoded with the
count the container declares, logs a warning naming both, and keeps them in
``frames_declared`` / ``frames_decoded`` / ``truncated`` / ``decode_error``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MAX_SOURCE_SIDE",
    "MAX_SIDE",
    "InputError",
    "FrameSource",
    "VideoFileSource",
    "ImageFolderSource",
    "open_source",
    "find_inputs",
    "natural_key",
    "resize_max_side",
    "fit_max_side",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_SOURCE_SIDE = 16384  # larger frames are refused outright
MAX_SIDE = 8192  # frames processed larger than this need --max-res
MIN_SIDE = 2
DEFAULT_FOLDER_FPS = 30.0

log = logging.getLogger(__name__)


def _tag_seconds(value: str | None) -> float | None:
    """Seconds of a Matroska ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``); ``None`` if absent or odd."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", (value or "").strip())
    if not match:
        return None
    h, m, sec = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(sec)


class InputError(ValueError):
    """An input cannot be used; the message names the file, the problem and the fix."""


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def fit_max_side(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """Size with the longest side at most ``max_side`` (aspect kept, each side ≥ 1)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_max_side(frame: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale a uint8 ``(H, W, 3)`` frame so its longest side is ``max_side`` (bicubic)."""
    h, w = fit_max_side(frame.shape[0], frame.shape[1], max_side)
    if (h, w) == frame.shape[:2]:
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))


def _check_size(height: int, width: int, where: str, max_resolution: int | None) -> tuple[int, int]:
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SOURCE_SIDE:
        raise InputError(
            f"{where}: frame size {height}x{width} is absurd (each side must be {MIN_SIDE}..{MAX_SOURCE_SIDE} px); "
            f"is the file damaged?"
        )
    out = fit_max_side(height, width, max_resolution)
    if max(out) > MAX_SIDE:
        raise InputError(
            f"{where}: frame size {height}x{width} is larger than {MAX_SIDE} px on a side; "
            f"pass a maximum resolution (--max-res {MAX_SIDE // 2}, or max_resolution=...)"
        )
    if max(out) / min(out) > 20:
        raise InputError(f"{where}: frame size {height}x{width} has an aspect ratio over 20:1; crop it first")
    return out


@dataclass
class Sampling:
    """Which source frames to take (see the module docstring)."""

    start: int = 0
    end: int | None = None
    stride: int | None = None
    fps: float | None = None
    max_resolution: int | None = None

    def __post_init__(self) -> None:
        if self.stride is not None and self.fps is not None:
            raise ValueError("give either a frame stride or a target fps, not both")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be ≥ 1, got {self.stride}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.start < 0:
            raise ValueError(f"start must be ≥ 0, got {self.start}")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        if self.max_resolution is not None and self.max_resolution < 14:
            raise ValueError(f"max resolution must be at least 14 px, got {self.max_resolution}")

    def step(self, source_fps: float) -> int:
        if self.stride is not None:
            return self.stride
        if self.fps is not None and source_fps > 0:
            return max(1, round(source_fps / self.fps))
        return 1

    def selects(self, index: int, step: int) -> bool:
        return index >= self.start and (self.end is None or index < self.end) and (index - self.start) % step == 0


class FrameSource:
    """An opened, checked input. Iterate it for uint8 ``(H, W, 3)`` frames (re-iterable).

    ``name`` is used for the output folder; ``fps`` is the rate of the *selected* frames;
    ``height``/``width`` the size of the frames yielded; ``frame_count`` an estimate of the
    number of frames yielded (``None`` if unknown).
    """

    path: Path
    name: str
    source_fps: float
    fps: float
    height: int
    width: int
    frame_count: int | None

    def __iter__(self) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class VideoFileSource(FrameSource):
    """A video file decoded lazily with PyAV (FFmpeg).

    ``frames_declared``: the number of frames the container declares (its frame count, else
    its duration × rate; ``None`` if it says neither). After a full pass, ``frames_decoded``
    is the number of source frames decoded, ``decode_error`` the decoder's error if decoding
    stopped on one, and ``truncated`` whether fewer frames came out than declared.
    """

    def __init__(self, path: str | Path, sampling: Sampling | None = None) -> None:
        import av

        self.path = Path(path)
        self.name = self.path.stem
        self.sampling = sampling or Sampling()
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: the file is empty (0 bytes)")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError(f"{self.path}: the file has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.source_fps = float(rate) if rate else 30.0
                src_h, src_w = int(stream.codec_context.height), int(stream.codec_context.width)
                total = int(stream.frames) if stream.frames else None
                # what the container declares, to tell a truncated file: a frame count (exact), else
                # the video stream's own duration (mkv: its DURATION tag), off by a frame or so at most
                self._declared_slack = 0.0
                seconds = None
                if total is None and stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif total is None:
                    seconds = _tag_seconds(stream.metadata.get("DURATION"))
                if seconds:
                    total = int(round(seconds * self.source_fps))
                    self._declared_slack = 0.01
                declared = total
                if total is None and container.duration:  # microseconds (AV_TIME_BASE)
                    total = int(round(container.duration / 1e6 * self.source_fps))
                    # it spans every stream (a longer audio track): a declaration only for video alone
                    declared = total if len(container.streams) == 1 else None
                    self._declared_slack = 0.02
        except av.error.FFmpegError as err:
            raise InputError(
                f"{self.path}: cannot be opened as a video ({err}); is it a complete mp4/mov/avi/mkv/webm file?"
            ) from err
        if src_h and src_w:
            _check_size(src_h, src_w, str(self.path), self.sampling.max_resolution)
        self.frames_declared: int | None = declared
        self.frames_decoded: int | None = None  # set by each full pass
        self.truncated = False
        self.decode_error: str | None = None
        self._step = self.sampling.step(self.source_fps)
        self.fps = self.source_fps / self._step
        frames = iter(self)
        first = next(frames, None)  # decode the first selected frame: fails early on bad data
        frames.close()  # type: ignore[attr-defined]
        if first is None:
            raise InputError(
                f"{self.path}: no frames could be decoded"
                + (
                    f" in the selected range (start {self.sampling.start}, end {self.sampling.end})"
                    if self.sampling.start or self.sampling.end
                    else ""
                )
            )
        self.height, self.width = first.shape[:2]
        self.frame_count = None
        if total is not None:
            last = total if self.sampling.end is None else min(total, self.sampling.end)
            self.frame_count = max(0, math.ceil((last - self.sampling.start) / self._step))

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        sampling = self.sampling
        size: tuple[int, int] | None = None
        index = -1
        yielded = 0
        reached_end = False  # stopped at sampling.end, not at the end of the data
        error: str | None = None
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    index += 1
                    if sampling.end is not None and index >= sampling.end:
                        reached_end = True
                        break
                    if not sampling.selects(index, self._step):
                        continue
                    h, w = frame.height, frame.width
                    if size is None:
                        size = _check_size(h, w, str(self.path), sampling.max_resolution)
                    image = frame.to_ndarray(format="rgb24")
                    if sampling.max_resolution is not None:
                        image = resize_max_side(image, sampling.max_resolution)
                    if image.shape[:2] != size:
                        raise InputError(
                            f"{self.path}: frame {index} is {h}x{w} but earlier frames were different; "
                            f"videos whose resolution changes mid-stream are not supported (re-encode it)"
                        )
                    yielded += 1
                    yield image
        except av.error.FFmpegError as err:
            if not yielded:
                raise InputError(
                    f"{self.path}: decoding failed after frame {index} ({err}); the file may be truncated"
                ) from err
            error = f"{type(err).__name__}: {err}"  # keep what was decoded; _end_of_pass warns
        self._end_of_pass(index if reached_end else index + 1, reached_end, error)

    def _end_of_pass(self, decoded: int, reached_end: bool, error: str | None) -> None:
        """Record and warn when the data ended before the declared frame count (or on an error)."""
        self.frames_decoded, self.decode_error = decoded, error
        expected = self.frames_declared
        if expected is not None and self.sampling.end is not None:
            expected = min(expected, self.sampling.end)
        slack = math.ceil(self._declared_slack * (expected or 0)) + (self._declared_slack > 0)
        short = expected is not None and not reached_end and decoded < expected - slack
        self.truncated = short or (error is not None and (expected is None or decoded < expected))
        if self.truncated:
            declared = f"declares {self.frames_declared} frames" if self.frames_declared else "declares no frame count"
            log.warning(
                "%s: the container %s but only %d could be decoded (%s): the file is truncated or damaged, "
                "so the results stop at source frame %d",
                self.path, declared, decoded, error or "the data ends early", decoded - 1,
            )
        elif error is not None:
            log.warning("%s: decoding ended with an error after all %d frames (%s)", self.path, decoded, error)


class ImageFolderSource(FrameSource):
    """A folder of images (or a single image file), in natural name order."""

    def __init__(
        self,
        path: str | Path,
        sampling: Sampling | None = None,
        folder_fps: float = DEFAULT_FOLDER_FPS,
        files: Sequence[Path] | None = None,
    ) -> None:
        self.path = Path(path)
        self.sampling = sampling or Sampling()
        if files is None:
            if self.path.is_file():
                files = [self.path]
            elif self.path.is_dir():
                try:
                    files = sorted(
                        (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                        key=lambda p: natural_key(p.name),
                    )
                except OSError as err:
                    raise InputError(f"{self.path}: the folder cannot be read ({err.strerror or err})") from err
            else:
                raise InputError(f"{self.path}: no such file or folder")
        if not files:
            raise InputError(f"{self.path}: the folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.source_fps = float(folder_fps)
        self._step = self.sampling.step(self.source_fps)
        self.fps = self.source_fps / self._step
        self.files = [f for i, f in enumerate(files) if self.sampling.selects(i, self._step)]
        if not self.files:
            raise InputError(
                f"{self.path}: no images in the selected range (start {self.sampling.start}, end {self.sampling.end})"
            )
        first_size: tuple[int, int] | None = None
        for file in self.files:  # headers only: cheap, and catches mixed sizes before any output
            w, h = self._header_size(file)
            if first_size is None:
                first_size = (h, w)
                _check_size(h, w, str(file), self.sampling.max_resolution)
            elif (h, w) != first_size:
                raise InputError(
                    f"{file}: image is {h}x{w} but {self.files[0].name} is {first_size[0]}x{first_size[1]}; "
                    f"all frames of a folder must have one size"
                )
        assert first_size is not None
        self.height, self.width = fit_max_side(*first_size, self.sampling.max_resolution)
        self.frame_count = len(self.files)

    @staticmethod
    def _header_size(file: Path) -> tuple[int, int]:
        try:
            with Image.open(file) as img:
                return img.size
        except (OSError, Image.DecompressionBombError, ValueError) as err:
            raise InputError(f"{file}: cannot be read as an image ({err})") from err

    def __iter__(self) -> Iterator[np.ndarray]:
        for file in self.files:
            try:
                with Image.open(file) as img:
                    image = np.asarray(img.convert("RGB"))
            except (OSError, Image.DecompressionBombError, ValueError) as err:
                raise InputError(f"{file}: cannot be decoded as an image ({err})") from err
            if self.sampling.max_resolution is not None:
                image = resize_max_side(image, self.sampling.max_resolution)
            yield image


def open_source(
    path: str | Path,
    *,
    start: int = 0,
    end: int | None = None,
    stride: int | None = None,
    fps: float | None = None,
    max_resolution: int | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> FrameSource:
    """Open a video file, an image folder or a single image as a checked :class:`FrameSource`."""
    sampling = Sampling(start=start, end=end, stride=stride, fps=fps, max_resolution=max_resolution)
    p = Path(path)
    if p.is_dir() or (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        return ImageFolderSource(p, sampling, folder_fps=folder_fps)
    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFileSource(p, sampling)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    raise InputError(
        f"{p}: unsupported input type {p.suffix!r}; give a video ({', '.join(VIDEO_EXTENSIONS)}), "
        f"an image or a folder of images"
    )


def find_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand the command line's inputs: a folder holding videos (and no images) stands for
    its videos, in natural order; anything else is taken as given (checked when opened)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                entries = [e for e in p.iterdir() if e.is_file()]
            except OSError:  # unreadable: reported by name when it is opened
                out.append(p)
                continue
            has_images = any(e.suffix.lower() in IMAGE_EXTENSIONS for e in entries)
            videos = sorted(
                (e for e in entries if e.suffix.lower() in VIDEO_EXTENSIONS), key=lambda e: natural_key(e.name)
            )
            if videos and not has_images:
                out += videos
                continue
        out.append(p)
    return out
