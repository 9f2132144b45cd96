"""Seeded weights in the official key layouts, and a Hugging Face Hub cache laid out on disk.

``official_state(model, family)`` writes our model's weights under the official names (the
inverse of the DAv2 / VDA adapters), including the stored-but-unused tensors (DINOv2's
``mask_token``, the deepest fusion block's ``resConfUnit1``), so the files look like the
released ``.pth`` files. ``place_in_hub_cache`` puts a file where ``huggingface_hub`` looks
for it: ``models--org--name/snapshots/<commit>/<file>`` with ``refs/<revision>`` naming the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_PREFIX = {"dav2": "depth_head.", "vda": "head."}


def official_state(model: nn.Module, family: str) -> dict[str, Tensor]:
    """Our ``dav2``/``vda`` model's state dict under the official key names (ViT-S/B/L encoders)."""
    head = HEAD_PREFIX[family]
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder."):
            out["pretrained." + key[len("encoder."):]] = value.clone()
        elif key.startswith("head."):
            out[head + key[len("head."):]] = value.clone()
        else:
            raise ValueError(f"{key}: not part of a {family} model")
    dim = model.encoder.embed_dim
    features = model.head.features
    out["pretrained.mask_token"] = torch.zeros(1, dim)
    for conv in ("conv1", "conv2"):
        out[f"{head}scratch.refinenet4.resConfUnit1.{conv}.weight"] = torch.zeros(features, features, 3, 3)
        out[f"{head}scratch.refinenet4.resConfUnit1.{conv}.bias"] = torch.zeros(features)
    return out


def place_in_hub_cache(cache: Path, repo_id: str, filename: str, source_state: dict[str, Tensor],
                       revision: str = "main") -> Path:
    """Save ``source_state`` as ``filename`` of ``repo_id`` in a Hub cache at ``cache``; returns the file."""
    commit = hashlib.sha1(f"{repo_id}/{filename}".encode()).hexdigest()  # any 40-hex commit id
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    path = snapshot / filename
    torch.save(source_state, path)
    return path
