"""Callbacks the gemdepth CLI always adds: the embedded config, a checkpoint on SIGTERM, and
the writer of ``gemdepth predict``'s per-clip ``.npz`` files."""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)

CONFIG_KEY = "gemdepth_config"

__all__ = ["CONFIG_KEY", "EmbedConfig", "SigtermCheckpoint", "ClipPredictionWriter"]


class EmbedConfig(Callback):
    """Store the full parsed run config (plain dict) in every checkpoint under ``gemdepth_config``.

    With it ``gemdepth test --ckpt run.ckpt`` rebuilds model, data and trainer settings with no
    other flag. Plain types only, so the checkpoint still loads with ``weights_only=True``.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint[CONFIG_KEY] = copy.deepcopy(self.config)


class SigtermCheckpoint(Callback):
    """Save ``last.ckpt`` on SIGTERM during ``fit`` and at the end of ``fit``.

    Lightning's signal connector turns SIGTERM into a ``SIGTERMException`` after the running
    batch (all DDP ranks together); ``on_exception`` then writes the checkpoint (model,
    optimiser, schedulers, loop progress) where ``--ckpt_path last`` finds it: the directory of
    the first ``ModelCheckpoint`` (``trainer.default_root_dir`` if there is none). At the end of
    a run it writes ``last.ckpt`` too unless a checkpoint was just saved at this step, so the
    next stage's ``init_weights: .../last.ckpt`` always holds the final weights.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and getattr(cb, "_last_global_step_saved", -1) == trainer.global_step:
                if cb.save_last:
                    return
        trainer.save_checkpoint(self.checkpoint_path(trainer), weights_only=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_info(f"SIGTERM: saved {path} at global step {trainer.global_step}; resume with --ckpt_path last")

    @staticmethod
    def checkpoint_path(trainer: Trainer) -> str:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
        return os.path.join(trainer.default_root_dir, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)


_FLOAT16_MAX = float(np.finfo(np.float16).max)


class ClipPredictionWriter(BasePredictionWriter):
    """Write one ``<clip key>.npz`` per predicted clip (``gemdepth predict``).

    Each file holds ``disparity`` float16 ``(T, H, W)`` (the model's relative disparity at the
    input crop), ``key`` (the clip's sample key) and, when the model has GEM, ``extrinsics``
    float32 ``(T, 4, 4)`` world-to-camera and ``intrinsics`` float32 ``(T, 3, 3)`` (pixels of the
    crop). Files are written under a temporary name and renamed, so a file that exists is
    complete. Every rank writes the clips it predicted (clip keys are unique).

    Args:
        output_dir: where the files go; ``None``: ``<trainer.log_dir>/predictions`` (the
            trainer's root directory when there is no logger).
    """

    def __init__(self, output_dir: str | os.PathLike | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.resolved_dir: Path | None = None
        self.written = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        root = self.output_dir
        if root is None:  # trainer.log_dir broadcasts rank 0's directory, so all ranks agree
            root = os.path.join(trainer.log_dir or trainer.default_root_dir, "predictions")
        self.resolved_dir = Path(root)
        self.resolved_dir.mkdir(parents=True, exist_ok=True)
        self.written = 0

    @staticmethod
    def file_stem(key: str) -> str:
        """A file name of a sample key (keys carry no dots or separators; others are replaced)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", key) or "clip"

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if not isinstance(prediction, Mapping) or "depth" not in prediction:
            raise TypeError("ClipPredictionWriter needs predict_step to return a dict with 'depth' "
                            f"(B, T, H, W), got {type(prediction).__name__}")
        if self.resolved_dir is None:
            self.setup(trainer, pl_module, "predict")
        depth = prediction["depth"].detach().float().cpu().numpy()
        keys = prediction.get("key") or [f"rank{trainer.global_rank}_dl{dataloader_idx}_batch{batch_idx:06d}_{b}"
                                         for b in range(len(depth))]
        cams = {k: prediction[k].detach().float().cpu().numpy() for k in ("extrinsics", "intrinsics")
                if prediction.get(k) is not None}
        for b, key in enumerate(keys):
            over = int((np.abs(depth[b]) > _FLOAT16_MAX).sum())
            if over:
                log.warning("clip %s: %d disparity values exceed float16's range and are stored as inf", key, over)
            arrays = {"disparity": depth[b].astype(np.float16), "key": np.array(str(key))}
            arrays.update({k: v[b].astype(np.float32) for k, v in cams.items()})
            self._save(self.resolved_dir / f"{self.file_stem(str(key))}.npz", arrays)
            self.written += 1

    @staticmethod
    def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
        """``np.savez`` to a temporary file in ``path``'s folder, then an atomic rename."""
        from gemdepth.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ranks = f" (rank {trainer.global_rank} of {trainer.world_size})" if trainer.world_size > 1 else ""
        log.info("wrote %d clip prediction(s) to %s%s", self.written, self.resolved_dir, ranks)
        rank_zero_info(f"predictions: {self.written} clip(s) written to {self.resolved_dir}{ranks}")
