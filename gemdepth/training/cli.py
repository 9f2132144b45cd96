"""``gemdepth fit|validate|test|predict``: LightningCLI over :class:`GemDepthTask` and a DataModule.

The model is :class:`GemDepthTask` (no subclass mode). The data argument is a subclass of
``LightningDataModule`` defaulting to ``gemdepth.data.datamodule.VideoDataModule``, whose init
args configs give flat (``data: {train_sources: ..., batch_size: 1}``); an evaluation config
swaps in ``gemdepth.evaluation.datamodule.EvalDataModule`` with ``data: {class_path: ...}``.

What this adds to plain LightningCLI:

* ``--ckpt PATH`` is an alias of ``--ckpt_path PATH``;
* every checkpoint embeds the run's full config (``checkpoint["gemdepth_config"]``), and
  ``validate``/``test``/``predict`` with a checkpoint file start from that config, so
  ``gemdepth test --ckpt run.ckpt`` needs no other flag (later ``-c``/flags still override);
* a checkpoint given to ``validate``/``test``/``predict`` (or an existing file given to ``fit``)
  supersedes ``model.init_weights``, which is then not loaded;
* SIGTERM during ``fit`` saves ``last.ckpt`` before exiting (resume with ``--ckpt_path last``);
  the command then returns 143 (128 + SIGTERM);
* every checkpoint is written beside its final name, fsynced and renamed
  (:class:`~gemdepth.training.checkpoint_io.AtomicCheckpointIO`), so a kill or a full disk
  mid-save never destroys the previous ``last.ckpt``;
* ``predict`` writes one ``<clip key>.npz`` per clip (:class:`ClipPredictionWriter`) into
  ``--predict_dir`` (default ``<log dir>/predictions``) and keeps no predictions in memory
  (``--return_predictions true`` to keep them).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gemdepth.data.shards import ShardError
from gemdepth.training.callbacks import CONFIG_KEY, ClipPredictionWriter, EmbedConfig, SigtermCheckpoint
from gemdepth.training.checkpoint_io import AtomicCheckpointIO
from gemdepth.training.task import GemDepthTask

log = logging.getLogger(__name__)

__all__ = ["GemDepthCLI", "run_lightning_cli", "embedded_config"]

EVAL_COMMANDS = ("validate", "test", "predict")


class GemDepthCLI(LightningCLI):
    """LightningCLI that embeds its config in checkpoints, skips ``init_weights`` on restore and
    writes ``predict``'s outputs to files."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.embed_callback = EmbedConfig()
        self.prediction_writer = ClipPredictionWriter()  # acts in `predict` only
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        defaults["callbacks"] = [self.embed_callback, SigtermCheckpoint(), self.prediction_writer]
        super().__init__(*args, trainer_defaults=defaults, **kwargs)

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if sub is None:
            return
        parser = self._parser(sub)
        self.embed_callback.config = yaml.safe_load(parser.dump(self.config[sub], skip_none=False))
        self.prediction_writer.output_dir = self.config[sub].get("predict_dir")
        ckpt = self.config[sub].get("ckpt_path")
        restoring = bool(ckpt) and (sub in EVAL_COMMANDS or Path(str(ckpt)).is_file())
        if restoring and self.config[sub].get("model.init_weights"):
            log.info("weights come from %s; model.init_weights is not loaded", ckpt)
            self.config[sub]["model.init_weights"] = None

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def add_arguments_to_parser(self, parser: Any) -> None:
        # data is a subclass argument defaulting to VideoDataModule: configs give its init args
        # flat, and `-c configs/eval/<benchmark>.yaml` swaps in the EvalDataModule by class_path
        parser.set_defaults({"data": {"class_path": "gemdepth.data.datamodule.VideoDataModule"}})
        parser.add_argument("--predict_dir", type=str | None, default=None,
                            help="gemdepth predict: folder of the per-clip .npz files "
                                 "(default: <log dir>/predictions)")

    def _require_split(self, split: str, hint: str) -> None:
        from gemdepth.data.datamodule import VideoDataModule

        if not isinstance(self.datamodule, VideoDataModule):
            return  # e.g. the evaluation DataModule: it knows its own data
        hp = self.datamodule.hparams
        # the DataModule's fallbacks: predict -> test -> val; val -> hold-out shards of training
        order = {"predict": ("predict", "test", "val")}.get(split, (split,))
        sources = next((hp.get(f"{s}_sources") for s in order if hp.get(f"{s}_sources")), None)
        if "val" in order and not sources:
            sources = hp.get("holdout_shards") and hp.get("train_sources")
        if not sources:
            print(f"gemdepth {self.subcommand}: no {split} data: {hint}", file=sys.stderr)
            raise SystemExit(2)

    def before_validate(self) -> None:
        self._require_split("val", "set data.val_sources (or data.holdout_shards with train_sources)")

    def before_test(self) -> None:
        self._require_split("test", "set data.test_sources, e.g. -c configs/eval/<benchmark>.yaml")

    def before_predict(self) -> None:
        from lightning.pytorch import LightningDataModule
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if self.datamodule is None or not is_overridden("predict_dataloader", self.datamodule, LightningDataModule):
            print(
                f"gemdepth predict: {type(self.datamodule).__name__} has no predict_dataloader; "
                "for videos and frame folders use `gemdepth infer INPUT --ckpt CKPT`",
                file=sys.stderr,
            )
            raise SystemExit(2)
        self._require_split("predict", "set data.predict_sources (or data.test_sources / data.val_sources); "
                            "for videos and frame folders use `gemdepth infer INPUT --ckpt CKPT`")
        if self.config_init[self.subcommand].get("return_predictions") is None:
            # the writer callback stores every clip; keeping them all in memory too would grow without bound
            self.config_init[self.subcommand]["return_predictions"] = False


def use_atomic_checkpoints(trainer: Any) -> None:
    """Swap Lightning's default checkpoint writer for :class:`AtomicCheckpointIO`.

    A writer the user configured (``trainer.plugins``) or a strategy with its own (sharded
    checkpoints) is left alone.
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def embedded_config(ckpt_path: str | os.PathLike) -> dict[str, Any] | None:
    """The run config a gemdepth checkpoint embeds (``None`` for checkpoints without one)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unreadable: say so, then fall back to the flags and config files given
        log.warning("could not read the run config embedded in checkpoint %s (%s: %s); using the command "
                    "line's config files and defaults instead", ckpt_path, type(err).__name__, err)
        return None
    cfg = ckpt.get(CONFIG_KEY) if isinstance(ckpt, dict) else None
    return copy.deepcopy(cfg) if isinstance(cfg, dict) else None


def _normalise_args(args: Sequence[str]) -> list[str]:
    """``--ckpt X`` / ``--ckpt=X`` → ``--ckpt_path X``."""
    out = []
    for arg in args:
        if arg == "--ckpt":
            out.append("--ckpt_path")
        elif arg.startswith("--ckpt="):
            out.append("--ckpt_path=" + arg[len("--ckpt="):])
        else:
            out.append(arg)
    return out


def _arg_value(args: Sequence[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def _has_config(args: Sequence[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in args)


def run_lightning_cli(args: Sequence[str]) -> int:
    """Run ``gemdepth <fit|validate|test|predict> ...``; returns a process exit code."""
    args = _normalise_args(args)
    if not args:
        args = ["--help"]
    sub = args[0]
    ckpt = _arg_value(args, "--ckpt_path")
    with tempfile.TemporaryDirectory(prefix="gemdepth-cli-") as tmp:
        if ckpt and Path(ckpt).is_file() and (sub in EVAL_COMMANDS or (sub == "fit" and not _has_config(args))):
            cfg = embedded_config(ckpt)
            if cfg is not None:
                cfg.pop("ckpt_path", None)
                if sub != "fit":
                    cfg.get("model", {}).pop("init_weights", None)
                path = Path(tmp) / "embedded_config.yaml"
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                args = [sub, "--config", str(path), *args[1:]]
        try:
            from lightning.pytorch import LightningDataModule

            # argv is kept (DDP re-launches ranks from it), so passing args too is intended here
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            # streamed clips have no sampler indices; the prediction writer names files by clip key
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")

            GemDepthCLI(
                GemDepthTask,
                LightningDataModule,
                subclass_mode_model=False,
                subclass_mode_data=True,
                auto_configure_optimizers=False,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                args=args,
            )
        except SIGTERMException:
            return 128 + int(signal.SIGTERM)
        except (ShardError, FileNotFoundError) as exc:  # an unfinished/tampered corpus, a missing file
            print(f"gemdepth {sub}: {exc}", file=sys.stderr)
            return 1
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
