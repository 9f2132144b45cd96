"""Test helpers for inference: small deterministic fake models and an independent, plain
(non-streaming) re-implementation of the official long-video algorithm to compare against."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from gemdepth.geometry import compose_extrinsics, fov_to_intrinsics, invert_rigid, quat_to_rotmat
from gemdepth.models.types import DepthOutput

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _axis_angle(v: Tensor) -> Tensor:
    """Rotation matrices of axis-angle vectors (..., 3) (Rodrigues)."""
    theta = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    half = theta / 2
    quat = torch.cat([v / theta * torch.sin(half), torch.cos(half)], dim=-1)
    return quat_to_rotmat(quat)


class FakeVideoModel(nn.Module):
    """Depth is a nonlinear function of each frame and of the whole window (so windows need
    different alignments), with negative values before the ReLU (so the clamp matters).
    Cameras (optional) depend on the frames' colour statistics, relative to slot 0, with
    translations normalised per window like GEM's."""

    def __init__(self, cameras: bool = True, max_frames: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.9, -0.4, 0.6]))
        self.cameras = cameras
        self.max_frames = max_frames
        self.calls: list[tuple[int, ...]] = []

    def forward(self, video: Tensor) -> DepthOutput:
        self.calls.append(tuple(video.shape))
        b, t, _, h, w = video.shape
        lum = (video * self.weight.view(1, 1, 3, 1, 1)).sum(2)  # (B, T, h, w)
        ctx = video.mean(dim=(1, 2, 3, 4)).view(b, 1, 1, 1)
        slot = torch.arange(t, dtype=video.dtype, device=video.device).view(1, t, 1, 1)
        gain = 1.0 + 0.8 * torch.tanh(8.0 * ctx)
        depth = F.relu(0.1 + 0.5 * gain * lum + 0.2 * lum**2 + 0.02 * slot + 0.5 * ctx)
        if not self.cameras:
            return DepthOutput(depth=depth)
        stats = video.mean(dim=(3, 4))  # (B, T, 3)
        rot = _axis_angle(0.5 * (stats - stats[:, :1]) + 1e-4)
        trans = torch.stack(
            [
                video[..., : h // 2, :].mean((2, 3, 4)),
                video[..., :, : w // 2].mean((2, 3, 4)),
                video[:, :, 0].mean((2, 3)),
            ],
            -1,
        )
        trans = trans - trans[:, :1]
        trans = trans / (trans.norm(dim=-1).mean(1, keepdim=True)[..., None] + 1e-6)
        extr = compose_extrinsics(rot, trans)
        fov = torch.full((b, t), 1.0, dtype=video.dtype, device=video.device)
        intr = fov_to_intrinsics(fov, fov * 1.2, h, w)
        return DepthOutput(depth=depth, extrinsics=extr, intrinsics=intr)


class PoseOracleModel(nn.Module):
    """Returns the true cameras of known frames: each input slot is matched to the nearest
    known frame (by its network input), and the poses are given relative to slot 0 with the
    translations normalised per window (mean norm 1), as GEM's per-clip scale normalisation.
    Depth is a smooth function of the input. Checks the camera plumbing, not a model."""

    def __init__(self, inputs: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> None:
        super().__init__()
        self.register_buffer("known", inputs.flatten(1))  # (N, 3·h·w)
        self.extrinsics = extrinsics.to(torch.float64)
        self.intrinsics = intrinsics.to(torch.float32)
        self.max_frames = None

    def forward(self, video: Tensor) -> DepthOutput:
        b, t, _, h, w = video.shape
        flat = video.flatten(2).flatten(0, 1)
        ids = torch.cdist(flat, self.known).argmin(-1).view(b, t)
        ext = self.extrinsics[ids]  # (B, T, 4, 4) world-to-camera
        rel = ext @ invert_rigid(ext[:, :1])  # relative to slot 0
        norm = rel[..., :3, 3].norm(dim=-1).mean(1, keepdim=True).clamp_min(1e-9)
        rel[..., :3, 3] = rel[..., :3, 3] / norm[..., None]
        depth = F.relu(1.0 + 0.3 * video.mean(2))
        return DepthOutput(depth=depth, extrinsics=rel.to(torch.float32), intrinsics=self.intrinsics[ids])


# --------------------------------------------------------------------------- reference
def reference_network_size(height: int, width: int, input_size: int) -> tuple[int, int]:
    """The official size rule, written out again independently of gemdepth.inference."""
    ratio = max(height, width) / min(height, width)
    if ratio > 1.78:
        input_size = round(int(input_size * 1.777 / ratio) / 14) * 14
    scale = max(input_size / height, input_size / width)

    def snap(x: float) -> int:
        y = int(np.round(x / 14) * 14)
        return y if y >= input_size else int(math.ceil(x / 14) * 14)

    return snap(height * scale), snap(width * scale)


def reference_preprocess(frame: np.ndarray, size: tuple[int, int]) -> Tensor:
    x = torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)[0]
    return (x - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]


def _lsq_scale_shift(pred: np.ndarray, target: np.ndarray) -> tuple[np.float32, np.float32]:
    pred = pred.astype(np.float32).ravel()
    target = target.astype(np.float32).ravel()
    a00, a01, a11 = np.sum(pred * pred), np.sum(pred), np.float32(pred.size)
    b0, b1 = np.sum(pred * target), np.sum(target)
    det = a00 * a11 - a01 * a01
    if det == 0:
        return np.float32(1), np.float32(0)
    return np.float32((a11 * b0 - a01 * b1) / det), np.float32((-a01 * b0 + a00 * b1) / det)


def reference_infer(
    model: nn.Module,
    frames: np.ndarray,
    input_size: int,
    window: int = 32,
    overlap: int = 10,
    keyframes: tuple[int, ...] = (0, 12, 24, 25, 26, 27, 28, 29, 30, 31),
    interp: int = 8,
) -> dict[str, np.ndarray | list]:
    """All windows first, then alignment over the lists, as the official code does it."""
    n, height, width = frames.shape[:3]
    step = window - overlap
    padded = list(frames) + [frames[-1]] * ((step - n % step) % step + overlap)
    size = reference_network_size(height, width, input_size)
    depths, extrs, intrs = [], [], []
    previous = None
    for first in range(0, n, step):
        x = torch.stack([reference_preprocess(f, size) for f in padded[first : first + window]])
        if previous is not None:
            x[:overlap] = previous[list(keyframes)]
        with torch.no_grad():
            out = model(x[None])
        up = F.interpolate(out.depth[0][:, None].float(), size=(height, width), mode="bilinear", align_corners=True)
        depths += [d[0].numpy() for d in up]
        if out.extrinsics is not None:
            intr = out.intrinsics[0].clone()
            intr[:, 0] *= width / size[1]
            intr[:, 1] *= height / size[0]
            extrs += list(out.extrinsics[0].numpy())
            intrs += list(intr.numpy())
        previous = x
    align = overlap - interp
    out_depth: list[np.ndarray] = []
    out_extr: list[np.ndarray] = []
    out_intr: list[np.ndarray] = []
    ref: list[np.ndarray] = []
    scales: list[tuple[float, float]] = []
    weights = np.linspace(0.0, 1.0, interp)
    for j in range(0, len(depths), window):
        if not out_depth:
            out_depth += depths[:window]
            out_extr += extrs[:window]
            out_intr += intrs[:window]
            ref = [depths[k] for k in keyframes[:align]]
            continue
        scale, shift = _lsq_scale_shift(np.stack(depths[j : j + align]), np.stack(ref))
        scales.append((float(scale), float(shift)))

        def fix(d: np.ndarray, scale: np.float32 = scale, shift: np.float32 = shift) -> np.ndarray:
            return np.maximum(d * scale + shift, 0)

        post = [fix(d) for d in depths[j + align : j + overlap]]
        out_depth[-interp:] = [p * (1 - wt) + q * wt for p, q, wt in zip(out_depth[-interp:], post, weights)]
        if extrs:
            out_extr[-interp:] = extrs[j + align : j + overlap]
            out_intr[-interp:] = intrs[j + align : j + overlap]
            out_extr += extrs[j + overlap : j + window]
            out_intr += intrs[j + overlap : j + window]
        out_depth += [fix(d) for d in depths[j + overlap : j + window]]
        ref = ref[:1] + [fix(depths[j + k]) for k in keyframes[1:align]]
    result: dict[str, np.ndarray | list] = {"depth": np.stack(out_depth[:n]), "scales": scales}
    if extrs:
        result["extrinsics"] = np.stack(out_extr[:n])
        result["intrinsics"] = np.stack(out_intr[:n])
    return result


def make_frames(n: int, height: int, width: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Smooth moving colour content, uint8 (n, H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=3)
    t = np.arange(n, dtype=np.float64)[:, None, None, None]
    freq = rng.uniform(2, 5, size=(3,))
    img = 0.5 + 0.45 * np.sin(freq * (xx[..., None] * 1.3 + yy[..., None]) * 3 + phase + 0.15 * t * freq)
    img = img * (0.75 + 0.25 * np.sin(0.08 * t + phase[0])) + noise * rng.standard_normal((n, height, width, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


class ShiftingModel(nn.Module):
    """Stateful: call ``c`` returns ``relu(lum + 0.4·c)``, so later windows need a negative
    shift and pixels near the ReLU's kink come out negative before the clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.9, -0.4, 0.6]))
        self.max_frames = None
        self.count = 0

    def forward(self, video: Tensor) -> DepthOutput:
        lum = (video * self.weight.view(1, 1, 3, 1, 1)).sum(2)
        depth = F.relu(lum + 0.4 * self.count)
        self.count += 1
        return DepthOutput(depth=depth)


# --------------------------------------------------------------------------- files
def write_video(path: Path, frames: np.ndarray, codec: str = "ffv1", pix_fmt: str = "bgr0", fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_folder(folder: Path, frames: np.ndarray, ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}.{ext}", **({"quality": 95} if ext == "jpg" else {}))
    return folder


PLY_TYPES = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4"}


def parse_ply(path: Path) -> np.ndarray:
    """A small, independent binary-little-endian PLY reader (vertex element only)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    count, fields = 0, []
    for line in lines:
        parts = line.split()
        if parts[0] == "element":
            assert parts[1] == "vertex"
            count = int(parts[2])
        elif parts[0] == "property":
            fields.append((parts[2], PLY_TYPES[parts[1]]))
    data = np.frombuffer(raw, dtype=np.dtype(fields), count=count, offset=end)
    assert end + data.nbytes == len(raw), "trailing bytes after the vertex data"
    return data
