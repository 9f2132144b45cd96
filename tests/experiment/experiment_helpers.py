"""A miniature experiment (2 variants × 2 seeds, a few steps on 28×28 clips) for the runner tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# the quickstart recipe shrunk to seconds: tiny encoder and head, 5-frame clips of 28x28 pixels
TINY_OVERRIDES = {
    "model": {
        "model": {
            "encoder": {"embed_dim": 48, "depth": 4, "num_heads": 3, "layer_idx": [0, 1, 2, 3]},
            "head": {"features": 32, "out_channels": [16, 32, 64, 64], "num_frames": 5},
        },
        "image_log_interval": 100000,
        "warmup_steps": 1,
    },
    "trainer": {"log_every_n_steps": 1, "enable_progress_bar": False},
    "data": {"clip_length": 5, "short_side": 28, "sizes": [[28, 28]], "eval_size": [28, 28], "batch_size": 1,
             "samples_per_epoch": 8, "num_workers": 0, "stride_range": [1, 1]},
}
TINY_CORPUS = {
    "train": {"sequences": 2, "frames": 10, "clip_length": 5, "size": [28, 28], "seed": 0, "camera": "fast"},
    "held_out": {"sequences": 2, "frames": 10, "clip_length": 5, "size": [28, 28], "seed": 1000, "camera": "fast"},
}
GEM = {"name": "gem", "num_heads": 4, "camera_num_heads": 2, "camera_trunk_depth": 1, "camera_iterations": 1}
ASTT = {"name": "astt", "num_heads": 1, "depth": 1}


def write_experiment(folder: Path, **changes) -> Path:
    """A miniature experiment file in ``folder`` (``changes`` replace top-level keys)."""
    spec = {
        "name": "mini",
        "base": str(REPO_ROOT / "configs" / "quickstart_stage1.yaml"),
        "output": str(folder / "out"),
        "seeds": [0, 1],
        "budget": {"max_steps": 3},
        "corpus": TINY_CORPUS,
        "train": ["train"],
        "eval": {"sets": ["held_out"], "metrics": ["AbsRel", "Delta1", "TAE"], "max_depth": 80.0},
        "overrides": TINY_OVERRIDES,
        "variants": {
            "host": {"model": {"model": {"plugins": []}}},
            "gem_astt": {"model": {"model": {"plugins": [GEM, ASTT]}}},
        },
        "paper": {"source": "test", "columns": ["KITTI AbsRel"], "values": {"host": [0.092]}},
    }
    spec.update(changes)
    path = folder / "mini.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
