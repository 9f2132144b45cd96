"""``GemDepthTask``: the one LightningModule of both training stages.

The model (host + plug-ins) is built from a config dict or preset (``gemdepth.models``), optionally
initialised from a gemdepth/official checkpoint (stage 2 starts from stage-1 weights this way: a
new run, not a resume). The task owns the losses (:mod:`gemdepth.losses`), the freeze schedule
and parameter groups (:mod:`gemdepth.training.params`), logging, and the metrics of
validation/test (:mod:`gemdepth.metrics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from gemdepth.losses import GemDepthLoss, depth_to_disparity
from gemdepth.models.types import DepthOutput
from gemdepth.training.params import build_param_groups, freeze_parameters, frozen_modules, lr_factor, matches

log = logging.getLogger(__name__)

__all__ = ["GemDepthTask", "window_settings"]


def window_settings(window: int) -> tuple[int, int, int]:
    """``(window, overlap, interp)`` of the windowed inference for a window length.

    32 gives the official 32/10/8; shorter windows keep the same proportions within what the
    windowing accepts (``overlap ≥ 3``, ``2 ≤ interp ≤ min(overlap-1, window-overlap)``).
    """
    if window < 5:
        raise ValueError(f"windowed inference needs windows of at least 5 frames, got {window}")
    overlap = max(3, round(window * 10 / 32))
    interp = max(2, min(round(overlap * 0.8), overlap - 1, window - overlap))
    return window, overlap, interp


def _plain(t: Tensor) -> Tensor:
    """A normal tensor of a (possibly inference-mode) tensor: metric states outlive the eval loop."""
    return t.clone() if t.is_inference() else t


def _accepts(names: Sequence[str], option: str) -> bool:
    """Whether any metric in ``names`` takes constructor option ``option`` (or it names one of them)."""
    import inspect

    from gemdepth.metrics import METRICS, canonical_metric_name

    try:
        return canonical_metric_name(option) in names
    except KeyError:
        pass
    return any(option in inspect.signature(METRICS[n].__init__).parameters for n in names)

DEFAULT_METRICS = ("AbsRel", "Delta1", "TAE")


class GemDepthTask(LightningModule):
    """Train, validate, test and predict a GemDepth video-depth model.

    Args:
        model: model config dict (``{host, encoder, head, plugins}``), a preset name
            (``gemdepth-vda-vitl``) or a model YAML path. Stored normalised under
            ``hyper_parameters["model"]`` so ``gemdepth.load_model(ckpt)`` rebuilds it.
        init_weights: checkpoint to initialise from (gemdepth ``.ckpt``/``.safetensors`` or an
            official ``.pth`` of a compatible architecture). Not a resume: optimiser and step
            start fresh.
        init_partial: named allow-list(s) of modules that may be absent from ``init_weights``
            (``new-modules``: the plug-ins start fresh, e.g. VDA → GemDepth-VDA).
        loss: overrides of :class:`gemdepth.losses.LossWeights` (``alpha``, ``beta``, ``gamma``,
            ``trim``, ``cam_loss_type``, …). ``gamma: 0`` turns the camera loss off.
        freeze: globs of parameter names to freeze (excluded from the optimiser, their modules
            kept in eval mode), e.g. ``[encoder.*]`` (paper §3.1) plus ``plugins.gem.*`` in stage 2.
        keep_train_mode: globs of frozen modules to leave in train mode anyway (GEM has no
            dropout/BN; train mode keeps its random pose-feeding masks, the paper's Table 9).
        new_module_patterns: globs of parameters trained at ``lr_new``; all other trainable
            parameters (the pretrained host) use ``lr_pretrained``.
        lr_new, lr_pretrained, weight_decay, betas: AdamW settings (paper: 1e-4 / 1e-6).
        warmup_steps / warmup_ratio: linear warm-up length (steps, or a share of the run).
        decay: ``cosine`` | ``linear`` | ``poly`` | ``constant`` after warm-up; ``min_lr_ratio``
            is the final multiplier, ``poly_power`` the poly exponent.
        metrics: names from :mod:`gemdepth.metrics` computed in validation and test.
        metric_options: options for :func:`gemdepth.metrics.build_metrics` (e.g.
            ``{max_depth: 80, alignment: disparity_lstsq}``).
        image_log_interval: log image strips every N training steps (0: never) and for the first
            validation batch of every validation run.
        image_max_frames: frames per logged strip.
        eval_window: clips longer than the model's temporal window are evaluated with the
            windowed inference (``gemdepth.infer_video``) in windows of
            ``min(eval_window, head.num_frames)`` frames (overlap and cross-fade scaled from the
            official 32/10/8, see :func:`window_settings`).
        fresh_output_bias: bias given to the head's last convolution when the model is built
            from scratch (no ``init_weights``), so its final ReLU does not start dead; ``None``
            keeps the random init.
    """

    def __init__(
        self,
        model: dict[str, Any] | str = "gemdepth-vda-vits",
        init_weights: str | None = None,
        init_partial: str | list[str] | None = None,
        loss: dict[str, Any] | None = None,
        freeze: list[str] | None = None,
        keep_train_mode: list[str] | None = None,
        new_module_patterns: list[str] | None = None,
        lr_new: float = 1e-4,
        lr_pretrained: float = 1e-6,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int | None = None,
        warmup_ratio: float = 0.01,
        decay: str = "cosine",
        min_lr_ratio: float = 0.0,
        poly_power: float = 0.9,
        metrics: list[str] | None = None,
        image_log_interval: int = 500,
        image_max_frames: int = 8,
        eval_window: int = 32,
        fresh_output_bias: float | None = 1.0,
        metric_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from gemdepth.models import build_model, normalize_config, resolve_model_config

        model_cfg = normalize_config(resolve_model_config(model))
        self.save_hyperparameters()
        self.hparams["model"] = model_cfg  # the checkpoint always embeds the full model dict
        if init_weights:
            from gemdepth.weights import load_model

            self.model = load_model(init_weights, config=model_cfg, partial=init_partial).train()
            log.info("model initialised from %s", init_weights)
        else:
            self.model = build_model(model_cfg)
            if fresh_output_bias is not None:
                self._set_output_bias(fresh_output_bias)
        self.model_config = model_cfg

        self.loss_fn = GemDepthLoss(**(loss or {}))
        self.freeze_patterns = list(freeze if freeze is not None else ["encoder.*"])
        self.keep_train_mode = list(keep_train_mode or [])
        self.new_module_patterns = list(new_module_patterns if new_module_patterns is not None else ["plugins.*"])
        self.frozen_parameters = freeze_parameters(self.model, self.freeze_patterns)
        self.frozen_modules = frozen_modules(self.model, self.frozen_parameters)
        if decay not in ("cosine", "linear", "poly", "constant"):
            raise ValueError(f"decay must be cosine, linear, poly or constant, got {decay!r}")
        self.metric_names = list(metrics if metrics is not None else DEFAULT_METRICS)
        self.val_metrics = self._build_metrics()
        self.test_metrics = self._build_metrics()
        self.train(self.training)

    def _set_output_bias(self, value: float) -> None:
        """Start the head's last convolution at a positive bias (fresh models only).

        The head ends in a ReLU; with random weights its input can be negative at every pixel,
        giving zero depth and zero gradient from the first step (a dead model). Pretrained heads
        never start there, so this only touches models built from scratch.
        """
        convs = [m for m in self.model.head.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1]
        if convs and convs[-1].bias is not None:
            with torch.no_grad():
                convs[-1].bias.fill_(value)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "GemDepthTask":
        """Switch mode, keeping frozen modules in eval (unless listed in ``keep_train_mode``)."""
        super().train(mode)
        if mode:
            modules = dict(self.model.named_modules())
            for name in getattr(self, "frozen_modules", []):
                if not matches(name, self.keep_train_mode):
                    modules[name].eval()
        return self

    def on_train_start(self) -> None:
        self.train(True)

    # ------------------------------------------------------------------ metrics
    def _build_metrics(self) -> torch.nn.ModuleDict:
        """Metric collections by what an update needs: ``depth`` (metric-depth clips), ``pose``
        (clips with ground-truth cameras) and ``camera`` (those plus predicted cameras)."""
        out = torch.nn.ModuleDict()
        if not self.metric_names:
            return out
        from gemdepth.metrics import build_metrics, canonical_metric_name

        kinds: dict[str, list[str]] = {"depth": [], "pose": [], "camera": []}
        for name in self.metric_names:
            canon = canonical_metric_name(name)
            kind = "camera" if canon in ("ATE", "F1Score") else "pose" if canon in ("TAE", "TCD") else "depth"
            kinds[kind].append(canon)
        options = dict(self.hparams.metric_options or {})
        for kind, names in kinds.items():
            if names:
                out[kind] = build_metrics(names, **{k: v for k, v in options.items() if _accepts(names, k)})
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, video: Tensor) -> DepthOutput:
        return self.model(video)

    def _losses(self, out: DepthOutput, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.loss_fn(out.depth, batch, out.pose_enc)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        out = self.model(batch["video"])
        terms = self._losses(out, batch)
        bsz = batch["video"].shape[0]
        self.log("train/loss", terms["total"], prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "total"}, batch_size=bsz)
        if self._trainer is not None and self.trainer.optimizers:
            for group in self.trainer.optimizers[0].param_groups:
                self.log(f"lr/{group.get('name', 'group')}", group["lr"], batch_size=bsz)
        self._log_skip_counts()
        interval = self.hparams.image_log_interval
        if interval and self.global_step % interval == 0:
            self._log_images("train", batch, out)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step} (clips {list(batch.get('key', []))}): "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            )
        return terms["total"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            self.log("train/grad_norm", norm)

    def _log_skip_counts(self) -> None:
        """Samples the DataModule skipped so far: ``data/skipped`` and one curve per ``corpus/reason``."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        counts = getattr(dm, "skipped", None)
        if counts is None:
            return
        # the total has the same key on every rank (summed over ranks); per-reason keys appear
        # only where skips happened, so they are logged from rank 0 alone (no collective)
        total = torch.tensor(float(sum(counts.values())), device=self.device)
        self.log("data/skipped", total, reduce_fx="sum", sync_dist=True)
        if counts:
            self.log_dict({f"data/skipped/{k}": float(n) for k, n in counts.items()}, rank_zero_only=True)

    # ------------------------------------------------------------------ configure
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = build_param_groups(self.model, self.new_module_patterns, hp.lr_new, hp.lr_pretrained, hp.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=tuple(hp.betas))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("set trainer.max_steps: the learning-rate schedule needs a finite run length")
        total = int(total)
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(round(hp.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, total, warmup, hp.decay, hp.min_lr_ratio, hp.poly_power),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _predict_clip(self, video: Tensor) -> DepthOutput:
        """Whole clip ``(1, T, 3, H, W)``: one forward, or windowed inference when T exceeds the window."""
        limit = self.model.max_frames
        if limit is None or video.shape[1] <= limit:
            return self.model(video)
        from gemdepth.inference import infer_video

        from gemdepth.training.visualize import denormalize

        frames = (denormalize(video[0]).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        h, w = frames.shape[1:3]
        window, overlap, interp = window_settings(min(self.hparams.eval_window, limit))
        results = list(
            infer_video(
                self.model, iter(frames), input_size=min(h, w), window=window, overlap=overlap,
                interp=interp, device=self.device,
            )
        )
        depth = torch.stack([torch.as_tensor(r.depth) for r in results]).to(self.device)[None]
        extr = [getattr(r, "extrinsics", None) for r in results]
        extrinsics = torch.stack([torch.as_tensor(e) for e in extr]).to(self.device)[None] if all(e is not None for e in extr) else None
        return DepthOutput(depth=depth, extrinsics=extrinsics)

    def _eval_step(self, stage: str, batch: Mapping[str, Any], batch_idx: int) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        bsz = batch["video"].shape[0]
        long_clip = self.model.max_frames is not None and batch["video"].shape[1] > self.model.max_frames
        if long_clip:
            outs = [self._predict_clip(batch["video"][b : b + 1]) for b in range(bsz)]
            depth = torch.cat([o.depth for o in outs])
            out = DepthOutput(depth=depth, extrinsics=None if outs[0].extrinsics is None else torch.cat([o.extrinsics for o in outs]))
        else:
            out = self.model(batch["video"])
            terms = self._losses(out, batch)
            self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=bsz, sync_dist=True)
        with torch.inference_mode(False):
            skipped = self._update_metrics(metrics, batch, out)
        if skipped:
            self.log(f"{stage}/clips_without_metric_depth", float(skipped), reduce_fx="sum", batch_size=bsz)
        if stage == "val" and batch_idx == 0:
            self._log_images("val", batch, out)

    def _update_metrics(self, metrics: torch.nn.ModuleDict, batch: Mapping[str, Any], out: DepthOutput) -> int:
        """Update the collections clip by clip; returns how many clips had no metric depth."""
        skipped = 0
        for b in range(batch["video"].shape[0]):
            if bool(batch["is_disparity"][b]):
                skipped += 1  # AbsRel/δ1/TAE need metric ground truth
                continue
            pred, gt, valid = _plain(out.depth[b].float()), _plain(batch["depth"][b].float()), _plain(batch["valid"][b])
            name = batch["key"][b] if "key" in batch else None
            if "depth" in metrics:
                metrics["depth"].update(pred, gt, valid, name=name)
            if not bool(batch["has_pose"][b]):
                continue
            intr, extr = _plain(batch["intrinsics"][b].float()), _plain(batch["extrinsics"][b].float())
            if "pose" in metrics:
                metrics["pose"].update(pred, gt, valid, intr, extr, name=name)
            if "camera" in metrics and out.extrinsics is not None:
                pred_intr = None if out.intrinsics is None else _plain(out.intrinsics[b].float())
                metrics["camera"].update(pred, gt, valid, intr, extr, pred_extrinsics=_plain(out.extrinsics[b].float()),
                                         pred_intrinsics=pred_intr, name=name)
        return skipped

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Training-style clips: losses and metrics here; whole benchmark sequences (from
        ``gemdepth.evaluation.EvalDataModule``): the evaluation protocol's own step."""
        from gemdepth.evaluation.lightning import is_sequence_batch, sequence_test_step

        if is_sequence_batch(batch):
            sequence_test_step(self, batch, batch_idx)
            return
        self._eval_step("test", batch, batch_idx)

    def _log_metrics(self, stage: str, metrics: torch.nn.ModuleDict) -> None:
        """Compute (and sync across ranks) every collection; log the finite results.

        Every rank computes every collection, updated or not, so DDP's metric sync never waits
        on a rank that skipped; a metric no clip could score comes out NaN and is not logged.
        """
        import warnings

        values: dict[str, Tensor] = {}
        counters: dict[str, float] = {}
        for collection in metrics.values():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                result = collection.compute()
            for key, val in result.items():
                val = torch.as_tensor(val, dtype=torch.float32, device=self.device)
                if torch.isfinite(val).all():
                    values[f"{stage}/{key}"] = val
            counters.update(self._metric_counters(stage, collection))
            collection.reset()
        if values:
            self.log_dict(values, prog_bar=stage == "val")
        if counters:  # already summed over ranks by counts(): log from rank 0 without another sync
            self.log_dict(counters, rank_zero_only=True)

    def _metric_counters(self, stage: str, collection: Any) -> dict[str, float]:
        """The metrics' diagnostic counters (sequences skipped, frames dropped, ...) as
        ``<stage>/counts/<metric>/<counter>``; skips and drops are also logged as a warning."""
        out: dict[str, float] = {}
        items = collection.items() if hasattr(collection, "items") else [(type(collection).__name__, collection)]
        for name, metric in items:
            counts = getattr(metric, "counts", None)
            if not callable(counts):
                continue
            found = counts()  # every rank calls it (it all-reduces)
            out.update({f"{stage}/counts/{name}/{k}": float(v) for k, v in found.items()})
            lost = {k: v for k, v in found.items() if v and ("skipped" in k or "dropped" in k or "empty" in k)}
            if lost and self.trainer.is_global_zero:
                log.warning("%s %s: %s (see %s/counts/%s/* in the logs)", stage, name,
                            ", ".join(f"{k}={v}" for k, v in sorted(lost.items())), stage, name)
        return out

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        from gemdepth.evaluation.lightning import sequence_test_epoch_end

        if sequence_test_epoch_end(self) is not None:
            return  # a benchmark run: table and files written by the protocol
        self._log_metrics("test", self.test_metrics)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Depth ``(B, T, H, W)`` (relative disparity) and, with GEM, cameras, plus the clip keys.

        Clips longer than the model's temporal window go clip by clip through the windowed
        inference (which returns no intrinsics); others take one forward.
        """
        video = batch["video"] if isinstance(batch, Mapping) else batch
        limit = self.model.max_frames
        if limit is not None and video.shape[1] > limit:
            outs = [self._predict_clip(video[b : b + 1]) for b in range(video.shape[0])]
            extr = [o.extrinsics for o in outs]
            out = DepthOutput(depth=torch.cat([o.depth for o in outs]),
                              extrinsics=torch.cat(extr) if all(e is not None for e in extr) else None)
        else:
            out = self.model(video)
        result: dict[str, Any] = {"depth": out.depth.float().cpu()}
        if out.extrinsics is not None:
            result["extrinsics"] = out.extrinsics.float().cpu()
        if out.intrinsics is not None:
            result["intrinsics"] = out.intrinsics.float().cpu()
        if isinstance(batch, Mapping) and "key" in batch:
            result["key"] = list(batch["key"])
        return result

    # ------------------------------------------------------------------ images
    def _log_images(self, stage: str, batch: Mapping[str, Any], out: DepthOutput) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        if self._trainer is None or not self.trainer.is_global_zero:
            return
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        from gemdepth.training.visualize import camera_path_image, depth_strip

        disp, valid = depth_to_disparity(batch["depth"][:1].float(), batch["valid"][:1].bool(), batch["is_disparity"][:1])
        strip = depth_strip(batch["video"][0], disp[0], valid[0], out.depth[0], self.hparams.image_max_frames)
        images = {f"{stage}/depth_strip": strip}
        if bool(batch["has_pose"][0]):
            pred_extr = None if out.extrinsics is None else out.extrinsics[0].float()
            images[f"{stage}/camera_path"] = camera_path_image(batch["extrinsics"][0].float(), pred_extr)
        for lg in loggers:
            for tag, img in images.items():
                lg.experiment.add_image(tag, img, global_step=self.global_step)
