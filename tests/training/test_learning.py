"""Training learns: a seeded CPU run must clearly beat the untrained model on held-out sequences.

A broken loss, a graph cut off from the parameters, a wrong target or a frozen optimiser all
leave the held-out scores where the untrained model has them, so this fails on any of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from gemdepth.data.datamodule import VideoDataModule
from gemdepth.data.synthetic import SynthConfig, make_synthetic_corpus
from gemdepth.training import GemDepthTask
from training_helpers import tiny_model  # GemDepth-VDA with both plug-ins, tiny

SIZE = 56


def _trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   gradient_clip_val=1.0, **kwargs)


def _scores(task: GemDepthTask, dm: VideoDataModule) -> tuple[float, float]:
    result = _trainer().validate(task, datamodule=dm, verbose=False)[0]
    return result["val/AbsRel"], result["val/Delta1"]


@pytest.mark.slow
def test_training_beats_the_untrained_model_on_held_out_sequences(tmp_path: Path) -> None:
    scenes = SynthConfig(kind="mixed")
    make_synthetic_corpus(tmp_path / "train", 48, 8, 8, (SIZE, SIZE), seed=0, clips_per_shard=4,
                          progress=False, config=scenes)
    make_synthetic_corpus(tmp_path / "val", 3, 8, 8, (SIZE, SIZE), seed=1000, clips_per_shard=4,
                          progress=False, config=scenes)
    torch.set_num_threads(2)
    seed_everything(0)
    task = GemDepthTask(model=tiny_model(), freeze=[], lr_new=3e-3, lr_pretrained=3e-3, warmup_steps=5,
                        metrics=["AbsRel", "Delta1"], metric_options={"max_depth": 20.0}, image_log_interval=0)
    dm = VideoDataModule(train_sources={"train": {"path": str(tmp_path / "train")}},
                         val_sources={"val": {"path": str(tmp_path / "val")}},
                         batch_size=4, clip_length=4, short_side=SIZE, sizes=[(SIZE, SIZE)],
                         eval_size=(SIZE, SIZE), num_workers=0, samples_per_epoch=10_000, seed=0)
    abs_rel_0, delta1_0 = _scores(task, dm)
    _trainer(max_steps=200, limit_val_batches=0).fit(task, datamodule=dm)
    abs_rel, delta1 = _scores(task, dm)
    # Measured (seeded, 2 CPU threads): δ1 0.41 -> 0.63, AbsRel 0.31 -> 0.24 after 200 steps.
    # Scored up to 20 m: at this budget AbsRel up to 80 m is dominated by a few far pixels whose
    # aligned disparity is near 0 (it moved 0.37 -> 0.35..0.43 between runs while δ1 rose to 0.59
    # in every run), so δ1 carries the "clearly better" bar and AbsRel must fall too.
    assert delta1 >= delta1_0 * 4 / 3, (delta1_0, delta1)
    assert abs_rel < abs_rel_0 * 0.9, (abs_rel_0, abs_rel)
