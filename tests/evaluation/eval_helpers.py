"""Helpers of the evaluation tests (imported as ``eval_helpers``): tiny eval corpora in shards,
an oracle model, a tiny GemDepth config.

The *oracle* model reads the inverse depth that the test corpora encode as grey levels, so
its prediction is an exact affine function of the ground-truth disparity (up to 8-bit
quantisation): any crop, frame or box mistake between prediction and ground truth shows up as
error, and the protocol's numbers can be checked against independent computations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from gemdepth.data import write_corpus
from gemdepth.models.types import DepthOutput

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)

TINY_GEMDEPTH = {
    "host": "vda",
    "encoder": {"embed_dim": 48, "depth": 4, "num_heads": 3, "layer_idx": [0, 1, 2, 3]},
    "head": {"features": 32, "out_channels": [16, 32, 64, 64], "num_frames": 8},
    "plugins": [
        {"name": "gem", "num_heads": 4, "camera_num_heads": 4, "camera_trunk_depth": 1, "camera_iterations": 1},
        {"name": "astt", "num_heads": 2, "depth": 1},
    ],
}


class OracleModel(nn.Module):
    """Predicts ``2 · R / 255 + 0.25``: an affine function of the disparity the corpora encode."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, video: torch.Tensor) -> DepthOutput:
        rgb = video * STD.to(video) + MEAN.to(video)
        return DepthOutput(depth=(rgb[:, :, 0] * 2.0 + 0.25 + self.anchor).clamp_min(0))


def encode_rgb(depth: np.ndarray, disp_max: float) -> np.ndarray:
    """uint8 grey RGB of value ``255 · (1/depth) / disp_max`` (0 where depth is 0); grey so that
    the shards' JPEG (chroma subsampled) keeps it to about one grey level."""
    disp = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0.0) / disp_max
    grey = np.clip(np.round(disp * 255), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def make_clips(corpus: str, sequence: str, depth: np.ndarray, intrinsics: np.ndarray,
               extrinsics: np.ndarray | None, frame_indices: list[int], clip_length: int,
               rgb: np.ndarray | None = None, disp_max: float | None = None, meta: dict | None = None,
               valid: np.ndarray | None = None) -> list[dict]:
    """Consecutive clips of one sequence in the shard schema."""
    t, h, w = depth.shape
    if rgb is None:
        disp_max = disp_max or float(1.0 / depth[depth > 0].min())
        rgb = encode_rgb(depth, disp_max)
    clips = []
    for start in range(0, t, clip_length):
        sl = slice(start, min(start + clip_length, t))
        clip = {
            "rgb": rgb[sl], "depth": depth[sl].astype(np.float32),
            "intrinsics": intrinsics[sl].astype(np.float32),
            "extrinsics": None if extrinsics is None else extrinsics[sl].astype(np.float32),
            "meta": {"corpus": corpus, "sequence": sequence, "frame_indices": list(frame_indices[sl]),
                     "depth_kind": "metric", "has_pose": extrinsics is not None, "licence": "test",
                     "image_size": [h, w], **(meta or {})},
        }
        if valid is not None:
            clip["valid"] = valid[sl]
        clips.append(clip)
    return clips


def plane_sequence(t: int, h: int, w: int, seed: int = 0, rotate: float = 0.0, speed: float = 1.0) -> dict:
    """A slanted plane seen by a camera that translates (and optionally yaws):
    exact depth, intrinsics and world-to-camera extrinsics."""
    from gemdepth.geometry import compose_extrinsics, quat_to_rotmat

    f = 0.9 * w
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=np.float64)
    yaw = np.deg2rad(rotate) * np.arange(t)
    quat = np.stack([np.zeros(t), np.sin(yaw / 2), np.zeros(t), np.cos(yaw / 2)], -1)
    rot = quat_to_rotmat(torch.as_tensor(quat)).numpy()
    cam_centre = speed * np.stack([0.05 * np.arange(t), 0.02 * np.arange(t), np.zeros(t)], -1)
    trans = -np.einsum("tij,tj->ti", rot, cam_centre)
    extr = compose_extrinsics(torch.as_tensor(rot), torch.as_tensor(trans)).numpy()
    # world plane n·X = d, intersected with every pixel ray
    n = np.array([0.15, -0.1, 1.0]) / np.linalg.norm([0.15, -0.1, 1.0])
    d = 3.0 + 0.2 * seed
    v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rays_cam = np.stack([(u - k[0, 2]) / f, (v - k[1, 2]) / f, np.ones_like(u, dtype=float)], -1)
    depth = np.empty((t, h, w))
    for i in range(t):
        r_c2w = rot[i].T
        rays_w = rays_cam @ r_c2w.T
        depth[i] = (d - cam_centre[i] @ n) / (rays_w @ n)
    return {"depth": depth.astype(np.float32), "intrinsics": np.repeat(k[None], t, 0).astype(np.float32),
            "extrinsics": extr.astype(np.float32)}


def write_sequences(out: Path, corpus: str, sequences: dict[str, dict], clip_length: int = 4,
                    clips_per_shard: int = 2, meta: dict | None = None) -> Path:
    """Write ``{name: {depth, intrinsics, extrinsics[, frame_indices, rgb, valid]}}`` as a corpus."""
    clips = []
    for name, seq in sequences.items():
        t = seq["depth"].shape[0]
        clips += make_clips(corpus, name, seq["depth"], seq["intrinsics"], seq.get("extrinsics"),
                            list(seq.get("frame_indices", range(t))), clip_length, rgb=seq.get("rgb"),
                            disp_max=seq.get("disp_max"), meta=meta, valid=seq.get("valid"))
    write_corpus(clips, out, corpus, clips_per_shard=clips_per_shard, progress=False)
    return out
