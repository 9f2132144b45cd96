"""Callbacks the gemdepth CLI always adds: the embedded config, and a checkpoint on SIGTERM."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)

CONFIG_KEY = "gemdepth_config"

__all__ = ["CONFIG_KEY", "EmbedConfig", "SigtermCheckpoint"]


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
