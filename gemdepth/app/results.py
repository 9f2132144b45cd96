"""Reading one ``gemdepth infer`` output folder for the app (no Gradio here).

* :class:`ResultFolder` — what a folder holds (``depth.npz``, ``depth.mp4``, ``cameras.*``,
  ``points.ply``, ``run.json``), the depth frames memory-mapped (the npz is stored, not
  compressed, so a slider move reads one frame, not the whole video), one frame colourised
  with a colour bar, the camera centres.
* :func:`write_points_glb` — a GLB (binary glTF 2.0) of coloured points plus the camera path
  and a few camera frusta as lines: what Gradio's ``Model3D`` (Babylon.js) shows as an
  interactive point cloud. Hand-written (about 80 lines of a fixed glTF layout) rather than a
  mesh library dependency for one file type.
* :func:`read_ply` — the binary PLY vertices that :mod:`gemdepth.inference.pointcloud` writes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gemdepth.inference.writers import _LUT, DepthRange, colorize

__all__ = [
    "ResultError",
    "ResultFolder",
    "camera_centres",
    "find_results",
    "npz_member_memmap",
    "read_ply",
    "subsample_points",
    "trajectory_figure",
    "write_points_glb",
]

OUTPUT_FILES = ("depth.mp4", "depth.npz", "cameras.json", "cameras.npz", "points.ply", "run.json")


class ResultError(ValueError):
    """An output folder cannot be shown; the message names the folder and the fix."""


# --------------------------------------------------------------------------- npz frames
def npz_member_memmap(path: str | Path, member: str) -> np.ndarray:
    """The array ``member`` of an ``.npz`` as a read-only memory map when it is stored
    uncompressed (as the inference writers store it), else loaded into memory."""
    path = Path(path)
    name = member if member.endswith(".npy") else member + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise ResultError(f"{path}: has no array {member!r} (members: {zf.namelist()})") from None
            stored = info.compress_type == zipfile.ZIP_STORED
    except (zipfile.BadZipFile, OSError) as err:
        raise ResultError(f"{path}: cannot be read as an npz ({err}); re-run gemdepth infer") from None
    if not stored:
        with np.load(path, allow_pickle=False) as z:
            return z[member.removesuffix(".npy")]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header (its name/extra lengths may differ from the central one)
        if local[:4] != b"PK\x03\x04":
            raise ResultError(f"{path}: damaged zip (no local header for {name}); re-run gemdepth infer")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ResultError(f"{path}: {member} is Fortran-ordered; re-run gemdepth infer")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


# --------------------------------------------------------------------------- PLY / GLB
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
              "uint": "<u4", "uint32": "<u4", "int": "<i4", "int32": "<i4"}


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions float32 ``(N, 3)`` and colours uint8 ``(N, 3)`` of a binary little-endian PLY
    whose first element is ``vertex`` with scalar properties (colours grey when absent)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ResultError(f"{path}: not a PLY file")
        fields: list[tuple[str, str]] = []
        count, fmt, in_vertex = None, None, False
        while True:
            line = f.readline()
            if not line:
                raise ResultError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                if count is not None and in_vertex:
                    in_vertex = False  # later elements (faces) are not read
                    continue
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in _PLY_TYPES:
                    raise ResultError(f"{path}: unsupported vertex property {' '.join(words[1:])!r}")
                fields.append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if fmt != "binary_little_endian" or count is None:
            raise ResultError(f"{path}: only binary little-endian PLY point clouds are read (format {fmt})")
        data = np.fromfile(f, dtype=np.dtype(fields), count=count)
    if data.shape[0] != count:
        raise ResultError(f"{path}: truncated ({data.shape[0]} of {count} vertices); re-run gemdepth infer")
    names = data.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise ResultError(f"{path}: vertices have no x, y, z")
    xyz = np.stack([data["x"], data["y"], data["z"]], -1).astype(np.float32)
    if {"red", "green", "blue"} <= set(names):
        rgb = np.stack([data["red"], data["green"], data["blue"]], -1).astype(np.uint8)
    else:
        rgb = np.full((count, 3), 200, np.uint8)
    return xyz, rgb


def subsample_points(xyz: np.ndarray, rgb: np.ndarray, max_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points, a seeded uniform subset (order kept)."""
    if xyz.shape[0] <= max_points:
        return xyz, rgb
    keep = np.sort(np.random.default_rng(seed).choice(xyz.shape[0], max_points, replace=False))
    return xyz[keep], rgb[keep]


def camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    """World positions ``(T, 3)`` of world-to-camera ``(T, 4, 4)`` extrinsics: ``-Rᵀ t``."""
    e = np.asarray(extrinsics, np.float64)
    return -np.einsum("tji,tj->ti", e[:, :3, :3], e[:, :3, 3])


# OpenCV world (x right, y down, z forward) → glTF (y up, the first camera looking down -z)
_TO_GLTF = np.array([1.0, -1.0, -1.0])


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _frustum_lines(extrinsics: np.ndarray, intrinsics: np.ndarray | None, size: float, every: int) -> np.ndarray:
    """Segments ``(S, 2, 3)`` drawing a pyramid per ``every``-th camera, ``size`` deep."""
    segments = []
    for t in range(0, extrinsics.shape[0], every):
        e = np.asarray(extrinsics[t], np.float64)
        r, tr = e[:3, :3], e[:3, 3]
        if intrinsics is not None:
            k = np.asarray(intrinsics[t], np.float64)
            hx, hy = k[0, 2] / k[0, 0], k[1, 2] / k[1, 1]
        else:
            hx = hy = 0.6
        corners_cam = np.array([[-hx, -hy, 1], [hx, -hy, 1], [hx, hy, 1], [-hx, hy, 1]]) * size
        centre = -r.T @ tr
        corners = (corners_cam - tr) @ r  # Rᵀ (x - t), row vectors
        for i in range(4):
            segments.append([centre, corners[i]])
            segments.append([corners[i], corners[(i + 1) % 4]])
    return np.asarray(segments, np.float64).reshape(-1, 2, 3)


def write_points_glb(
    path: str | Path,
    xyz: np.ndarray,
    rgb: np.ndarray,
    extrinsics: np.ndarray | None = None,
    intrinsics: np.ndarray | None = None,
    frusta: int = 8,
) -> Path:
    """Binary glTF: the points (``POINTS``, vertex colours, unlit), and with ``extrinsics`` the
    camera path (``LINE_STRIP``, red) and about ``frusta`` camera pyramids (``LINES``, orange).
    Positions go from the OpenCV world of the outputs to glTF's y-up axes. Written atomically."""
    path = Path(path)
    if xyz.shape[0] == 0:
        raise ResultError("no points to write")
    chunks: list[bytes] = []
    views: list[dict[str, Any]] = []
    accessors: list[dict[str, Any]] = []
    offset = 0

    def add(array: np.ndarray, kind: str, target: int = 34962) -> int:
        nonlocal offset
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        chunks.append(data)
        offset += len(data)  # float32 data keeps 4-byte alignment
        acc: dict[str, Any] = {"bufferView": len(views) - 1, "componentType": 5126, "count": int(array.shape[0]),
                               "type": kind}
        if kind == "VEC3":
            acc["min"] = [float(v) for v in array.min(0)]
            acc["max"] = [float(v) for v in array.max(0)]
        accessors.append(acc)
        return len(accessors) - 1

    pos = add(np.asarray(xyz, np.float64) * _TO_GLTF, "VEC3")
    col = add(_srgb_to_linear(np.asarray(rgb)), "VEC3")
    unlit = {"KHR_materials_unlit": {}}
    materials = [
        {"name": "points", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1]}, "extensions": unlit},
        {"name": "camera path", "pbrMetallicRoughness": {"baseColorFactor": [1, 0.05, 0.05, 1]}, "extensions": unlit},
        {"name": "cameras", "pbrMetallicRoughness": {"baseColorFactor": [1, 0.55, 0, 1]}, "extensions": unlit},
    ]
    primitives = [{"attributes": {"POSITION": pos, "COLOR_0": col}, "mode": 0, "material": 0}]
    if extrinsics is not None and len(extrinsics) > 0:
        centres = camera_centres(extrinsics)
        if len(centres) > 1:
            primitives.append({"attributes": {"POSITION": add(centres * _TO_GLTF, "VEC3")}, "mode": 3, "material": 1})
        extent = float(np.linalg.norm(np.percentile(xyz, 95, 0) - np.percentile(xyz, 5, 0)))
        lines = _frustum_lines(np.asarray(extrinsics), intrinsics, 0.04 * max(extent, 1e-6),
                               max(1, math.ceil(len(extrinsics) / max(frusta, 1))))
        if lines.size:
            primitives.append({"attributes": {"POSITION": add(lines.reshape(-1, 3) * _TO_GLTF, "VEC3")}, "mode": 1,
                               "material": 2})
    gltf = {
        "asset": {"version": "2.0", "generator": "gemdepth app"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "gemdepth point cloud"}],
        "meshes": [{"primitives": primitives}],
        "materials": materials,
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary = b"".join(chunks)
    total = 12 + 8 + len(text) + 8 + len(binary)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<4sII", b"glTF", 2, total))
            f.write(struct.pack("<I4s", len(text), b"JSON") + text)
            f.write(struct.pack("<I4s", len(binary), b"BIN\x00") + binary)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- colour bar
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def depth_with_colour_bar(depth: np.ndarray, scale: DepthRange, min_height: int = 240, metric: bool = False) -> np.ndarray:
    """uint8 RGB image: the colourised map (the depth video's colours) and, to its right, a
    colour bar labelled with its values: relative disparity (near = bright), or with
    ``metric`` depth in metres (far = bright)."""
    image = colorize(depth, scale)
    h, w = image.shape[:2]
    zoom = max(1, math.ceil(min_height / h))
    if zoom > 1:
        image = np.repeat(np.repeat(image, zoom, 0), zoom, 1)
        h, w = image.shape[:2]
    font_size = max(10, min(18, h // 16))
    font = _font(font_size)
    bar_w, margin = max(12, h // 20), font_size // 2 + 2
    labels = [scale.high - (scale.high - scale.low) * i / 4 for i in range(5)]
    texts = [f"{v:.3g}" for v in labels]
    text_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in texts + ["near"])
    canvas = Image.new("RGB", (w + margin + bar_w + 6 + text_w + margin, h), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    top = int(1.7 * font_size) + 2  # room for the end word above the first value label
    bottom = h - top
    ramp = _LUT[np.linspace(255, 0, max(bottom - top, 2)).round().astype(np.uint8)]
    bar = np.repeat(ramp[:, None, :], bar_w, 1)
    x0 = w + margin
    canvas.paste(Image.fromarray(bar), (x0, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 - 1, top - 1, x0 + bar_w, top + bar.shape[0]], outline=(0, 0, 0))
    for i, text in enumerate(texts):
        y = top + (bar.shape[0] - 1) * i / 4
        draw.line([x0 + bar_w, y, x0 + bar_w + 4, y], fill=(0, 0, 0))
        draw.text((x0 + bar_w + 6, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    top_word, bottom_word = ("far", "near") if metric else ("near", "far")
    draw.text((x0 + bar_w // 2, 1), top_word, fill=(0, 0, 0), font=font, anchor="mt")
    draw.text((x0 + bar_w // 2, h - 1), bottom_word, fill=(0, 0, 0), font=font, anchor="mb")
    return np.asarray(canvas)


# --------------------------------------------------------------------------- trajectory plot
def trajectory_figure(extrinsics: np.ndarray, title: str = "camera trajectory") -> Any:
    """A matplotlib figure of the camera centres: 3D path and the top view (x–z), coloured by
    frame, start and end marked. Axes are the first camera's (relative units)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    c = camera_centres(extrinsics)
    t = np.arange(len(c))
    fig = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    # plot with y up: (x, z, -y) of the OpenCV camera axes
    ax3.plot(c[:, 0], c[:, 2], -c[:, 1], color="0.6", lw=1)
    ax3.scatter(c[:, 0], c[:, 2], -c[:, 1], c=t, cmap="viridis", s=10)
    ax3.scatter(*c[0, [0, 2]], -c[0, 1], color="green", s=40, label="start")
    ax3.scatter(*c[-1, [0, 2]], -c[-1, 1], color="red", s=40, label="end")
    ax3.set_xlabel("x (right)")
    ax3.set_ylabel("z (forward)")
    ax3.set_zlabel("up")
    ax3.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(c[:, 0], c[:, 2], color="0.6", lw=1)
    points = ax2.scatter(c[:, 0], c[:, 2], c=t, cmap="viridis", s=12)
    ax2.scatter(c[0, 0], c[0, 2], color="green", s=40)
    ax2.scatter(c[-1, 0], c[-1, 2], color="red", s=40)
    ax2.set_aspect("equal", adjustable="datalim")
    ax2.set_xlabel("x (right)")
    ax2.set_ylabel("z (forward)")
    ax2.set_title("top view", fontsize=10)
    fig.colorbar(points, ax=ax2, label="frame")
    return fig


# --------------------------------------------------------------------------- a folder
@dataclass
class ResultFolder:
    """One ``gemdepth infer`` output folder, opened for viewing (files are read lazily)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not (self.folder / "depth.npz").is_file():
            raise ResultError(
                f"{self.folder}: no depth.npz here; point at a `gemdepth infer` output folder "
                f"(OUT/<video name>/ with depth.npz, run.json, …)"
            )
        self._depth: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def run_info(self) -> dict[str, Any]:
        path = self.folder / "run.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @property
    def depth(self) -> np.ndarray:
        """``(T, H, W)`` float16 disparity, memory-mapped."""
        if self._depth is None:
            self._depth = npz_member_memmap(self.folder / "depth.npz", "depth")
            if self._depth.ndim != 3:
                raise ResultError(f"{self.folder / 'depth.npz'}: depth has shape {self._depth.shape}, expected (T, H, W)")
        return self._depth

    @property
    def frames(self) -> int:
        return int(self.depth.shape[0])

    def _small(self, member: str) -> np.ndarray | None:
        with np.load(self.folder / "depth.npz", allow_pickle=False) as z:
            return z[member] if member in z.files else None

    @property
    def metric(self) -> bool:
        """Depth in metres (a metric model) rather than relative disparity."""
        units = self._small("units")
        return units is not None and str(units) == "metres"

    def scale(self) -> DepthRange:
        """The colour scale of the depth video (stored in the npz), or the first frames' range."""
        rng = self._small("range")
        if rng is not None and rng.shape == (2,):
            low, high = float(rng[0]), float(rng[1])
            return DepthRange(low, high, max(high, 1e-12))
        return DepthRange.from_depths([np.asarray(d, np.float32) for d in self.depth[: min(self.frames, 8)]])

    def frame_image(self, index: int) -> np.ndarray:
        """Frame ``index`` (clamped) colourised, with its colour bar."""
        index = int(min(max(index, 0), self.frames - 1))
        return depth_with_colour_bar(np.asarray(self.depth[index], np.float32), self.scale(), metric=self.metric)

    def file(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None

    def cameras(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(extrinsics (T,4,4), intrinsics (T,3,3))`` from cameras.npz (or .json), or None."""
        npz, js = self.file("cameras.npz"), self.file("cameras.json")
        if npz is not None:
            with np.load(npz, allow_pickle=False) as z:
                return z["extrinsics"].astype(np.float64), z["intrinsics"].astype(np.float64)
        if js is not None:
            frames = json.loads(js.read_text())["frames"]
            return (np.array([f["extrinsics"] for f in frames], np.float64),
                    np.array([f["intrinsics"] for f in frames], np.float64))
        return None

    def viewer_glb(self, out: Path, max_points: int) -> Path | None:
        """``points.ply`` (subsampled to ``max_points``) plus the cameras as a GLB at ``out``;
        None without a point cloud."""
        ply = self.file("points.ply")
        if ply is None:
            return None
        xyz, rgb = subsample_points(*read_ply(ply), max_points)
        if xyz.shape[0] == 0:
            return None
        cams = self.cameras()
        return write_points_glb(out, xyz, rgb, *(cams if cams is not None else (None, None)))

    def downloads(self) -> list[Path]:
        return [p for p in (self.folder / n for n in OUTPUT_FILES) if p.is_file()]

    def summary(self) -> str:
        """A short Markdown description of the run."""
        info = self.run_info
        h, w = self.depth.shape[1:]
        parts = [f"**{self.name}**: {self.frames} frames, {w}×{h}", "metric depth (m)" if self.metric else
                 "relative disparity"]
        if info.get("fps"):
            parts.append(f"{float(info['fps']):.3g} fps")
        if info.get("network_input"):
            parts.append(f"network input {info['network_input'][1]}×{info['network_input'][0]}")
        if info.get("precision"):
            parts.append(str(info["precision"]))
        if info.get("frames_per_second"):
            parts.append(f"{info['frames_per_second']} frames/s")
        if info.get("model_label"):
            parts.append(str(info["model_label"]))
        missing = [n for n in ("cameras.json", "points.ply") if self.file(n) is None]
        text = ", ".join(parts)
        if missing:
            text += f". No {' or '.join(missing)} (a model without camera head, or no usable point)."
        return text


def find_results(root: str | Path) -> list[Path]:
    """Output folders under ``root``: ``root`` itself when it holds ``depth.npz``, else its
    sub-folders (one level, then two) that do, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise ResultError(f"{root}: no such folder (give a `gemdepth infer --out` folder or one of its sub-folders)")
    if (root / "depth.npz").is_file():
        return [root]
    found = sorted(p.parent for p in root.glob("*/depth.npz"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/depth.npz"))
    if not found:
        raise ResultError(f"{root}: no gemdepth infer outputs (no */depth.npz); run `gemdepth infer ... --out {root}`")
    return found
