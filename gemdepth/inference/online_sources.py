"""Live inputs for ``gemdepth infer``: webcams (``/dev/videoN``, PyAV's v4l2 input; ``avfoundation:N`` on
macOS) and network streams (``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://``).

A :class:`LiveSource` is a :class:`~gemdepth.inference.readers.FrameSource` that is opened (and its
first frame decoded) when created, so a missing camera or an unreachable address fails at once
with an :class:`~gemdepth.inference.readers.InputError` naming the input and the fix. Iterating
it decodes frames as they arrive until the stream ends or ``end`` frames were read (a webcam
never ends: stop with Ctrl-C or ``--end``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from gemdepth.inference.readers import (
    FrameSource,
    InputError,
    Sampling,
    _check_size,
    resize_max_side,
)

__all__ = ["LIVE_SCHEMES", "LiveSource", "is_live", "open_live_source"]

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_DEVICE = re.compile(r"^/dev/video\d+$")
_AVFOUNDATION = re.compile(r"^avfoundation:(.+)$")


def is_live(name: str | Path) -> bool:
    """Whether an input names a camera device or a network stream rather than a file or folder."""
    text = str(name)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    return scheme in LIVE_SCHEMES or bool(_DEVICE.match(text)) or bool(_AVFOUNDATION.match(text))


def _redact(url: str) -> str:
    """The URL without its password (``rtsp://user:secret@host`` → ``rtsp://user:***@host``), for logs and run.json."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _safe_name(text: str) -> str:
    """An output-folder name for a live input (``/dev/video0`` → ``video0``, a URL → host, port and path;
    never the credentials)."""
    if _DEVICE.match(text):
        return Path(text).name
    if "://" in text:
        parts = urlsplit(text)
        body = f"{parts.hostname or ''}_{parts.port or ''}_{parts.path}"
    else:
        body = text
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", body).strip("._")
    return name[:80] or "stream"


class LiveSource(FrameSource):
    """A camera or network stream decoded with PyAV as frames arrive (see the module docstring)."""

    def __init__(self, url: str, sampling: Sampling | None = None, timeout: float = 10.0) -> None:
        import av

        self.url = _redact(url)  # what messages and run.json show
        self.path = Path(_safe_name(url))  # for run.json's "input" and messages; the URL is in ``url``
        self.name = _safe_name(url)
        self.sampling = sampling or Sampling()
        self.timeout = float(timeout)
        self._open_args: dict[str, Any] = {"timeout": (self.timeout, self.timeout)}
        device = _DEVICE.match(url)
        mac = _AVFOUNDATION.match(url)
        if device:
            if not Path(url).exists():
                raise InputError(
                    f"{url}: no such camera device; list the cameras with `ls /dev/video*` "
                    f"(or `v4l2-ctl --list-devices`) and pass one of them"
                )
            self._target, self._open_args["format"] = url, "v4l2"
        elif mac:
            self._target, self._open_args["format"] = mac.group(1), "avfoundation"
        else:
            self._target = url
            if url.lower().startswith("rtsp"):
                self._open_args["options"] = {"rtsp_transport": "tcp"}
        try:
            with av.open(self._target, **self._open_args) as container:
                if not container.streams.video:
                    raise InputError(f"{url}: the stream has no video")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.source_fps = float(rate) if rate else 30.0
        except av.error.FFmpegError as err:
            raise InputError(self._open_error(err)) from err
        except OSError as err:
            raise InputError(self._open_error(err)) from err
        self._step = self.sampling.step(self.source_fps)
        self.fps = self.source_fps / self._step
        self.frames_declared = None
        frames = iter(self)
        first = next(frames, None)
        frames.close()  # type: ignore[attr-defined]
        if first is None:
            raise InputError(f"{url}: the stream delivered no frames (within {self.timeout:g} s)")
        self.height, self.width = first.shape[:2]
        self.frame_count = None
        if self.sampling.end is not None:
            self.frame_count = max(0, -(-(self.sampling.end - self.sampling.start) // self._step))

    def _open_error(self, err: Exception) -> str:
        cause = str(err).replace(self._target, self.url)  # FFmpeg's text names the URL: no password in it
        if _DEVICE.match(self.url):
            return (
                f"{self.url}: the camera cannot be opened ({cause}); is it in use by another program, "
                f"and may this user read it (the 'video' group)?"
            )
        return (
            f"{self.url}: cannot open the stream ({cause}); check the address and port, that the server is "
            f"running and reachable from here (firewall, VPN), and the credentials in the URL"
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        sampling = self.sampling
        size: tuple[int, int] | None = None
        index = -1
        try:
            container = av.open(self._target, **self._open_args)
        except (av.error.FFmpegError, OSError) as err:
            raise InputError(self._open_error(err)) from err
        with container:
            stream = container.streams.video[0]
            try:
                for frame in container.decode(stream):
                    index += 1
                    if sampling.end is not None and index >= sampling.end:
                        break
                    if not sampling.selects(index, self._step):
                        continue
                    if size is None:
                        size = _check_size(frame.height, frame.width, self.url, sampling.max_resolution)
                    image = frame.to_ndarray(format="rgb24")
                    if sampling.max_resolution is not None:
                        image = resize_max_side(image, sampling.max_resolution)
                    if image.shape[:2] != size:
                        raise InputError(
                            f"{self.url}: frame {index} is {frame.height}x{frame.width} but earlier frames were "
                            f"different; streams whose resolution changes are not supported"
                        )
                    yield image
            except av.error.FFmpegError as err:
                if index < 0:
                    raise InputError(self._open_error(err)) from err
                log.warning("%s: the stream ended with an error after %d frames (%s)", self.url, index + 1, err)


def open_live_source(
    url: str,
    *,
    start: int = 0,
    end: int | None = None,
    stride: int | None = None,
    fps: float | None = None,
    max_resolution: int | None = None,
    timeout: float = 10.0,
) -> LiveSource:
    """Open a camera or network stream as a checked :class:`LiveSource` (same sampling options as files)."""
    sampling = Sampling(start=start, end=end, stride=stride, fps=fps, max_resolution=max_resolution)
    return LiveSource(url, sampling, timeout=timeout)
