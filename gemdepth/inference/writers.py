"""Streaming, atomic output writers: depth.npz, 16-bit PNG / EXR frames, depth.mp4, cameras.

Every writer takes frames one at a time (``add``) and keeps at most one frame in memory: the
``(T, H, W)`` and ``(T, 4, 4)`` arrays are spooled to raw temporary files and packed into the
``.npz`` at the end, member by member, through :mod:`zipfile`. Everything is written under a
temporary name in the output folder (``.<name>.partial``) and renamed only by ``commit()``;
``abort()`` deletes the temporaries, so an interrupted run never leaves a file that looks
finished. ``commit()`` is ``finish()`` (all the writing: where a full disk shows up) then
``publish()`` (only renames), so a caller can finish every writer before renaming any. Finished files are fsynced before the rename. A writer whose constructor fails
(a full disk, a read-only folder) removes what it had created before the error propagates, and
``abort()`` never raises: a temporary that cannot be removed is logged by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from gemdepth.atomic import fsync_file
from gemdepth.inference.windowing import FrameResult

__all__ = [
    "partial_path",
    "replace_path",
    "DepthRange",
    "colorize",
    "DepthNpzWriter",
    "CamerasWriter",
    "Png16Writer",
    "ExrWriter",
    "DepthVideoWriter",
    "exr_available",
]

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 17  # bounded copy buffer when packing the npz


def partial_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete (hidden, clearly unfinished)."""
    return path.with_name(f".{path.name}.partial")


def replace_path(tmp: Path, final: Path) -> None:
    """Move a finished file or folder into place (a file is fsynced first), replacing an older one."""
    if tmp.is_dir():
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    else:
        fsync_file(tmp)
        os.replace(tmp, final)


def _remove(path: Path) -> None:
    """Delete a temporary file or folder; never raises (a failure is logged with the path)."""
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove the temporary %s (%s); delete it by hand", path, err.strerror or err)


@contextlib.contextmanager
def _undo_on_error(writer: Any) -> Any:
    """Run a writer's constructor; if it fails, ``writer.abort()`` removes what was created."""
    try:
        yield
    except BaseException:
        writer.abort()
        raise


# --------------------------------------------------------------------------- colour scale
class DepthRange:
    """One colour / quantisation scale for a whole video, from its first frames.

    The windowing aligns every window to window 0's scale, so robust percentiles (2 %, 98 %) of
    the first window describe the whole video well; later values outside are clipped in the
    video (and counted in the PNG writer).
    """

    def __init__(self, low: float, high: float, peak: float) -> None:
        self.low, self.high, self.peak = float(low), float(high), float(peak)

    @classmethod
    def from_depths(cls, depths: list[np.ndarray], samples: int = 1 << 20) -> DepthRange:
        if not depths:
            return cls(0.0, 1.0, 1.0)
        step = max(1, int(np.sqrt(len(depths) * depths[0].size / samples)))
        values = np.concatenate([d[::step, ::step].ravel() for d in depths]).astype(np.float32)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 1.0, 1.0)
        low, high = np.percentile(values, [2.0, 98.0])
        peak = float(values.max())
        if not high > low:
            low, high = float(values.min()), max(float(values.max()), float(values.min()) + 1e-6)
        return cls(low, high, max(peak, 1e-12))

    def as_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "peak": self.peak}


# Approximate anchors of matplotlib's perceptually uniform 'inferno' map (low → high).
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_LUT = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], -1
    )
    .round()
    .astype(np.uint8)
)


def colorize(depth: np.ndarray, scale: DepthRange) -> np.ndarray:
    """uint8 ``(H, W, 3)`` colour image of a disparity map (near = bright) on a fixed scale."""
    t = (depth.astype(np.float32) - scale.low) / max(scale.high - scale.low, 1e-12)
    idx = np.clip(np.nan_to_num(t, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _LUT[idx]


# --------------------------------------------------------------------------- npz spooling
class _Spool:
    """Fixed-shape frames appended to a raw temporary file, packed into an npz member later."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.count = 0
        self._file: BinaryIO | None = None
        self._file = open(path, "wb")

    def add(self, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=self.dtype)
        if array.shape != self.shape:
            raise ValueError(f"frame of shape {array.shape} does not match {self.shape}")
        assert self._file is not None
        self._file.write(array.tobytes())
        self.count += 1

    def finish(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # may raise (ENOSPC on the last flush); the file is closed anyway

    def write_member(self, zf: zipfile.ZipFile, name: str) -> None:
        self.finish()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.shape),
        }
        with zf.open(f"{name}.npy", "w", force_zip64=True) as member, open(self.path, "rb") as raw:
            np.lib.format.write_array_header_1_0(member, header)
            shutil.copyfileobj(raw, member, _COPY_CHUNK)

    def remove(self) -> None:
        """Close and delete the spool file; never raises (see :func:`_remove`)."""
        with contextlib.suppress(OSError):
            self.finish()
        _remove(self.path)


def _write_npz(path: Path, spools: dict[str, _Spool], arrays: dict[str, Any]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, spool in spools.items():
            spool.write_member(zf, name)
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


class DepthNpzWriter:
    """``depth.npz``: ``depth`` float16 ``(T, H, W)`` relative disparity at the frame size,
    ``fps``, ``frame_indices`` (source frame numbers) and the colour ``range`` used."""

    def __init__(self, path: Path, height: int, width: int, fps: float) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self._spools: list[_Spool] = []
        with _undo_on_error(self):
            self._spool = self._new_spool(_Spool(self.tmp.with_suffix(".depth.raw"), (height, width), np.float16))
            self._indices = self._new_spool(_Spool(self.tmp.with_suffix(".index.raw"), (), np.int64))
        self.fps = fps
        self.extra: dict[str, Any] = {}

    def _new_spool(self, spool: _Spool) -> _Spool:
        self._spools.append(spool)
        return spool

    def add(self, result: FrameResult, source_index: int) -> None:
        self._spool.add(result.depth.astype(np.float16))
        self._indices.add(np.int64(source_index))

    def finish(self) -> None:
        _write_npz(
            self.tmp,
            {"depth": self._spool, "frame_indices": self._indices},
            {"fps": np.float64(self.fps), **self.extra},
        )
        self._spool.remove()
        self._indices.remove()

    def publish(self) -> Path:
        replace_path(self.tmp, self.path)
        return self.path

    def commit(self) -> Path:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        for spool in self._spools:
            spool.remove()
        _remove(self.tmp)


class CamerasWriter:
    """``cameras.npz`` (``extrinsics`` (T,4,4) world-to-camera OpenCV, ``intrinsics`` (T,3,3) in
    pixels of the frames, ``frame_indices``, ``image_size``) and ``cameras.json`` (the same per
    frame, with the conventions spelled out)."""

    def __init__(self, folder: Path, height: int, width: int, fps: float, chained: bool) -> None:
        self.npz = Path(folder) / "cameras.npz"
        self.json = Path(folder) / "cameras.json"
        self.tmp_npz, self.tmp_json = partial_path(self.npz), partial_path(self.json)
        self._spools: list[_Spool] = []
        self._json: Any = None
        with _undo_on_error(self):
            self._extr = self._new_spool(_Spool(self.tmp_npz.with_suffix(".extr.raw"), (4, 4), np.float32))
            self._intr = self._new_spool(_Spool(self.tmp_npz.with_suffix(".intr.raw"), (3, 3), np.float32))
            self._index = self._new_spool(_Spool(self.tmp_npz.with_suffix(".index.raw"), (), np.int64))
            self._json = open(self.tmp_json, "w", encoding="utf-8")
            self._write_head(height, width, fps, chained)
        self.size = (height, width)
        self._first = True

    def _new_spool(self, spool: _Spool) -> _Spool:
        self._spools.append(spool)
        return spool

    def _write_head(self, height: int, width: int, fps: float, chained: bool) -> None:
        head = {
            "convention": "extrinsics are world-to-camera [R|t; 0 0 0 1], OpenCV axes (x right, y down, z forward); "
            "intrinsics in pixels of the frames; world = the first frame's predicted camera frame",
            "translation_scale": "relative (GEM normalises translations); windows chained by similarity"
            if chained
            else "relative, per window as the official inference (not chained)",
            "image_size": [height, width],
            "fps": fps,
        }
        self._json.write(json.dumps(head, indent=1)[:-2] + ',\n "frames": [')

    def add(self, result: FrameResult, source_index: int) -> None:
        if result.extrinsics is None or result.intrinsics is None:
            raise ValueError("the model predicted no cameras for this frame")
        self._extr.add(result.extrinsics)
        self._intr.add(result.intrinsics)
        self._index.add(np.int64(source_index))
        entry = {
            "index": result.index,
            "frame": source_index,
            "extrinsics": np.asarray(result.extrinsics, np.float64).round(8).tolist(),
            "intrinsics": np.asarray(result.intrinsics, np.float64).round(6).tolist(),
        }
        self._json.write(("\n  " if self._first else ",\n  ") + json.dumps(entry))
        self._first = False

    def finish(self) -> None:
        self._json.write("\n ]\n}\n")
        self._json.close()
        _write_npz(
            self.tmp_npz,
            {"extrinsics": self._extr, "intrinsics": self._intr, "frame_indices": self._index},
            {"image_size": np.array(self.size, dtype=np.int64)},
        )
        for spool in (self._extr, self._intr, self._index):
            spool.remove()

    def publish(self) -> list[Path]:
        replace_path(self.tmp_npz, self.npz)
        replace_path(self.tmp_json, self.json)
        return [self.npz, self.json]

    def commit(self) -> list[Path]:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        if self._json is not None and not self._json.closed:
            with contextlib.suppress(OSError):  # the last flush may fail on a full disk
                self._json.close()
        for spool in self._spools:
            spool.remove()
        _remove(self.tmp_npz)
        _remove(self.tmp_json)


# --------------------------------------------------------------------------- image frames
class Png16Writer:
    """``depth_png16/<frame>.png``: uint16 = round(disparity · scale), clipped to 65535;
    ``scale.json`` says ``disparity = value / scale``. The scale maps twice the first window's
    peak to 65535, and clipped pixels are counted."""

    def __init__(self, folder: Path, scale: DepthRange) -> None:
        self.final = Path(folder) / "depth_png16"
        self.tmp = partial_path(self.final)
        _remove(self.tmp)
        with _undo_on_error(self):
            self.tmp.mkdir(parents=True)
        self.scale = 65535.0 / (2.0 * scale.peak)
        self.clipped = 0

    def add(self, result: FrameResult, source_index: int) -> None:
        value = np.round(result.depth.astype(np.float64) * self.scale)
        self.clipped += int((value > 65535).sum())
        Image.fromarray(np.clip(value, 0, 65535).astype(np.uint16)).save(self.tmp / f"{source_index:06d}.png")

    def finish(self) -> None:
        meta = {"disparity": "value / scale", "scale": self.scale, "clipped_pixels": self.clipped}
        (self.tmp / "scale.json").write_text(json.dumps(meta, indent=1))

    def publish(self) -> Path:
        replace_path(self.tmp, self.final)
        return self.final

    def commit(self) -> Path:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        _remove(self.tmp)


def exr_available() -> bool:
    """Whether the ``OpenEXR`` package (needed for ``--exr``) can be imported."""
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        return False
    return True


class ExrWriter:
    """``depth_exr/<frame>.exr``: float32 disparity in channel ``Z`` (ZIP compression), via the
    ``OpenEXR`` package."""

    def __init__(self, folder: Path) -> None:
        if not exr_available():
            raise RuntimeError("EXR output needs the OpenEXR package: pip install OpenEXR (or use --png16)")
        import OpenEXR

        self._exr = OpenEXR
        self.final = Path(folder) / "depth_exr"
        self.tmp = partial_path(self.final)
        _remove(self.tmp)
        with _undo_on_error(self):
            self.tmp.mkdir(parents=True)

    def add(self, result: FrameResult, source_index: int) -> None:
        header = {"compression": self._exr.ZIP_COMPRESSION, "type": self._exr.scanlineimage}
        image = self._exr.File(header, {"Z": np.ascontiguousarray(result.depth, dtype=np.float32)})
        image.write(str(self.tmp / f"{source_index:06d}.exr"))

    def finish(self) -> None:
        """Nothing left to write: every frame was written by ``add``."""

    def publish(self) -> Path:
        replace_path(self.tmp, self.final)
        return self.final

    def commit(self) -> Path:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        _remove(self.tmp)


# --------------------------------------------------------------------------- video
def video_codec() -> str:
    """libx264 if PyAV's FFmpeg has it, else the always-present mpeg4."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class DepthVideoWriter:
    """``depth.mp4``: the source frame and its colourised depth side by side, one colour scale
    for the whole video, encoded with PyAV (libx264 CRF 18, else mpeg4)."""

    def __init__(
        self, path: Path, height: int, width: int, fps: float, scale: DepthRange, max_width: int = 3840
    ) -> None:
        import av

        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.scale = scale
        factor = min(1.0, max_width / (2 * width))
        self.half = (max(2, int(round(height * factor)) // 2 * 2), max(2, int(round(width * factor)) // 2 * 2))
        self.container: Any = None
        with _undo_on_error(self):
            self.container = av.open(str(self.tmp), mode="w", format="mp4")
            self._add_stream(fps)
        self._av = av

    def _add_stream(self, fps: float) -> None:
        codec = video_codec()
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.height, self.stream.width = self.half[0], 2 * self.half[1]
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            self.stream.bit_rate = 8_000_000

    def _fit(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == self.half:
            return image
        return np.asarray(Image.fromarray(image).resize((self.half[1], self.half[0]), Image.Resampling.BILINEAR))

    def add(self, result: FrameResult, source_index: int) -> None:
        colour = self._fit(colorize(result.depth, self.scale))
        left = self._fit(result.image) if result.image is not None else np.zeros_like(colour)
        frame = self._av.VideoFrame.from_ndarray(
            np.ascontiguousarray(np.concatenate([left, colour], 1)), format="rgb24"
        )
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None

    def publish(self) -> Path:
        replace_path(self.tmp, self.path)
        return self.path

    def commit(self) -> Path:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception as err:  # noqa: BLE001 - the file is deleted next; say why closing failed
                log.warning("aborting %s: closing the unfinished video failed (%s: %s); it is deleted", self.tmp,
                            type(err).__name__, err)
            self.container = None
        _remove(self.tmp)
