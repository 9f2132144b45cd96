"""Tiny model configs and fake training batches shared by the training tests."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from gemdepth.geometry import compose_extrinsics, quat_to_rotmat

TINY_MODEL = {
    "host": "vda",
    "encoder": {"embed_dim": 48, "depth": 4, "num_heads": 3, "layer_idx": [0, 1, 2, 3]},
    "head": {"features": 32, "out_channels": [16, 32, 64, 64], "num_frames": 8},
    "plugins": [
        {"name": "gem", "num_heads": 4, "camera_num_heads": 4, "camera_trunk_depth": 1},
        {"name": "astt", "num_heads": 2, "depth": 1},
    ],
}


def make_batch(b: int = 2, t: int = 4, h: int = 28, w: int = 28, has_pose=None, seed: int = 0) -> dict:
    """A batch in the training-batch interface: smooth depth, a moving camera, ImageNet-normalised video."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(b, 1, 1, 1, generator=g) * math.pi
    tt = torch.arange(t).view(1, t, 1, 1) * 0.1
    depth = 2.0 + torch.sin(3 * xx + phase + tt) + yy  # (B, T, H, W), metres
    video = torch.stack([depth / 4, xx.expand_as(depth), yy.expand_as(depth)], dim=2)
    video = (video - 0.45) / 0.225 + 0.05 * torch.randn(video.shape, generator=g)
    axis = torch.randn(b, t, 3, generator=g) * 0.05
    quat = torch.cat([axis, torch.ones(b, t, 1)], dim=-1)
    trans = torch.cumsum(torch.randn(b, t, 3, generator=g) * 0.1, dim=1)
    extr = compose_extrinsics(quat_to_rotmat(quat), trans)
    k = torch.tensor([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]]).expand(b, t, 3, 3).clone()
    has_pose = torch.ones(b, dtype=torch.bool) if has_pose is None else torch.as_tensor(has_pose)
    extr = torch.where(has_pose.view(b, 1, 1, 1), extr, torch.eye(4).expand_as(extr))
    return {
        "video": video.float(),
        "depth": depth.float(),
        "valid": torch.ones(b, t, h, w, dtype=torch.bool),
        "intrinsics": k,
        "extrinsics": extr,
        "has_pose": has_pose,
        "is_disparity": torch.zeros(b, dtype=torch.bool),
        "key": [f"fake__seq{i}__0" for i in range(b)],
    }


class BatchList(torch.utils.data.Dataset):
    """A fixed list of pre-collated batches (the loader uses batch_size=None)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def loader(n: int = 4, **kwargs) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(BatchList([make_batch(seed=i, **kwargs) for i in range(n)]), batch_size=None)


def tiny_model() -> dict:
    """A fresh copy of the tiny GemDepth-VDA config."""
    return copy.deepcopy(TINY_MODEL)


def optimizer_fingerprint(states: list[dict]) -> float:
    """Sum of |exp_avg| + |exp_avg_sq| over an optimiser's saved state (order-free summary)."""
    total = 0.0
    for opt in states:
        for st in opt["state"].values():
            total += float(st["exp_avg"].abs().sum()) + float(st["exp_avg_sq"].abs().sum())
    return total


class StepMarker(Callback):
    """Callback used by the SIGTERM test.

    Writes ``<out>/started.json`` (global step and optimiser fingerprint when training starts)
    and ``<out>/step`` (the global step) after every batch, sleeping ``delay`` seconds so a
    signal can arrive mid-run.
    """

    def __init__(self, out: str, delay: float = 0.2) -> None:
        self.out = Path(out)
        self.delay = delay
        self.out.mkdir(parents=True, exist_ok=True)

    def on_train_start(self, trainer, pl_module) -> None:
        states = [o.state_dict() for o in trainer.optimizers]
        (self.out / "started.json").write_text(
            json.dumps({"global_step": trainer.global_step, "optimizer": optimizer_fingerprint(states)}))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        (self.out / "step").write_text(str(trainer.global_step))
        time.sleep(self.delay)
