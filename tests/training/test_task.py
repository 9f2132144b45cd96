"""GemDepthTask: freezing, eval mode of frozen modules, parameter groups, schedule, init weights."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from training_helpers import loader, make_batch, tiny_model

from gemdepth.training import GemDepthTask
from gemdepth.training.params import build_param_groups, freeze_parameters, frozen_modules, lr_factor, matches


def _trainer(steps: int = 3, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        gradient_clip_val=1.0, **kwargs,
    )


def _snapshot(task: GemDepthTask) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.model.named_parameters()}


def _changed(before: dict, task: GemDepthTask, prefix: str) -> tuple[int, int]:
    names = [n for n in before if n.startswith(prefix)]
    moved = sum(not torch.equal(before[n], dict(task.model.named_parameters())[n]) for n in names)
    return moved, len(names)


def test_patterns_and_frozen_modules():
    assert matches("plugins.gem.camera_head.x", ["plugins.gem.*"])
    assert matches("plugins.gem.camera_head.x", ["plugins.gem"])
    assert not matches("plugins.gemini.x", ["plugins.gem"])
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()))
    frozen = freeze_parameters(model, ["1.*"])
    assert frozen == ["1.0.weight", "1.0.bias"]
    assert frozen_modules(model, frozen) == ["1"]
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_parameters(model, ["encoder.*"])


def test_lr_schedule_shape():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "poly", poly_power=2.0) == pytest.approx(0.25)
    assert lr_factor(70, 100, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="decay"):
        lr_factor(50, 100, 10, "step")


def test_param_groups_follow_names_and_skip_frozen():
    task = GemDepthTask(model=tiny_model(), freeze=["encoder.*"], metrics=[])
    groups = build_param_groups(task.model, ["plugins.*"], 1e-4, 1e-6, 0.01)
    ids = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    named = dict(task.model.named_parameters())
    assert ids["new"] == {id(p) for n, p in named.items() if n.startswith("plugins.")}
    assert ids["pretrained"] == {id(p) for n, p in named.items() if n.startswith("head.")}
    assert [g["lr"] for g in groups] == [1e-4, 1e-6]
    # the official recipe: only ASTT is "new"; GEM joins the pretrained group
    groups = build_param_groups(task.model, ["plugins.astt.*"], 1e-5, 1e-6, 0.01)
    new = {id(p) for p in groups[0]["params"]}
    assert new == {id(p) for n, p in named.items() if n.startswith("plugins.astt.")}


def test_stage1_trains_everything_but_the_encoder():
    task = GemDepthTask(model=tiny_model(), freeze=["encoder.*"], lr_pretrained=1e-3, lr_new=1e-3,
                        warmup_steps=0, metrics=[])
    before = _snapshot(task)
    trainer = _trainer(3)
    trainer.fit(task, train_dataloaders=loader(3))
    assert trainer.global_step == 3
    assert _changed(before, task, "encoder.")[0] == 0
    moved, total = _changed(before, task, "plugins.gem.")
    assert moved == total  # the camera loss reaches every GEM parameter
    moved, total = _changed(before, task, "head.")
    assert moved > 0.9 * total
    opt = trainer.optimizers[0]
    assert [g["name"] for g in opt.param_groups] == ["new", "pretrained"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in task.model.named_parameters() if n.startswith("encoder."))


class _ModeProbe(Callback):
    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        m = pl_module.model
        self.modes.append({
            "encoder": m.encoder.training, "gem": m.plugins["gem"].training,
            "gem_block": m.plugins["gem"].frame_blocks[0].training,
            "astt": m.plugins["astt"].training, "head": m.head.training,
        })


@pytest.mark.parametrize("keep", [[], ["plugins.gem"]])
def test_stage2_freeze_keeps_frozen_modules_fixed_and_in_eval(keep):
    task = GemDepthTask(model=tiny_model(), freeze=["encoder.*", "plugins.gem.*"], keep_train_mode=keep,
                        loss={"gamma": 0.0}, lr_pretrained=1e-3, lr_new=1e-3, warmup_steps=0, metrics=[])
    assert set(task.frozen_modules) == {"encoder", "plugins.gem"}
    before = _snapshot(task)
    probe = _ModeProbe()
    # validation in between: Lightning switches to eval and back, frozen modules must stay eval
    trainer = _trainer(4, callbacks=[probe], val_check_interval=2, limit_val_batches=1)
    task.validation_step = lambda batch, batch_idx: None  # no metrics needed here
    trainer.fit(task, train_dataloaders=loader(4, has_pose=[False, False]), val_dataloaders=loader(1))
    assert _changed(before, task, "encoder.")[0] == 0
    assert _changed(before, task, "plugins.gem.")[0] == 0
    moved, total = _changed(before, task, "plugins.astt.")
    assert moved == total
    assert len(probe.modes) == 4
    for mode in probe.modes:
        assert mode["encoder"] is False
        assert mode["gem"] is bool(keep) and mode["gem_block"] is bool(keep)
        assert mode["astt"] is True and mode["head"] is True


def test_training_step_logs_every_term():
    task = GemDepthTask(model=tiny_model(), metrics=[], warmup_steps=0)
    trainer = _trainer(2)
    trainer.fit(task, train_dataloaders=loader(2, has_pose=[True, False]))
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/ssi", "train/gm", "train/tgm", "train/cam", "train/cam_trans",
                "train/cam_rot", "lr/new", "lr/pretrained", "train/grad_norm"):
        assert key in logged, key
        assert math.isfinite(float(logged[key]))
    assert float(logged["lr/pretrained"]) < float(logged["lr/new"])


def test_model_hparams_and_init_weights_round_trip(tmp_path):
    from gemdepth.weights import load_model

    task = GemDepthTask(model=tiny_model(), metrics=[])
    trainer = _trainer(1)
    trainer.fit(task, train_dataloaders=loader(1))
    ckpt = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["model"]["plugins"][0]["name"] == "gem"
    # H1's loader reads the Lightning checkpoint
    loaded = load_model(ckpt)
    for (n, a), (_, b) in zip(task.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    # stage 2 starts from stage-1 weights: a new task, not a resume
    stage2 = GemDepthTask(model=tiny_model(), init_weights=str(ckpt), freeze=["encoder.*", "plugins.gem.*"], metrics=[])
    for (n, a), (_, b) in zip(task.model.state_dict().items(), stage2.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert stage2.model.training and not stage2.model.encoder.training


def test_predict_step_returns_depth_and_cameras():
    task = GemDepthTask(model=tiny_model(), metrics=[]).eval()
    batch = make_batch(b=1, t=4)
    with torch.no_grad():
        out = task.predict_step(batch, 0)
    assert out["depth"].shape == (1, 4, 28, 28)
    assert out["extrinsics"].shape == (1, 4, 4, 4)
    assert out["key"] == batch["key"]


def test_validation_logs_metrics_and_images(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = GemDepthTask(model=tiny_model(), metrics=["AbsRel", "Delta1", "TAE"], image_log_interval=1,
                        warmup_steps=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      val_check_interval=2, limit_val_batches=2, log_every_n_steps=1)
    trainer.fit(task, train_dataloaders=loader(2), val_dataloaders=loader(2, has_pose=[True, False]))
    logged = trainer.callback_metrics
    for key in ("val/AbsRel", "val/Delta1", "val/TAE", "val/total"):
        assert key in logged and math.isfinite(float(logged[key])), key
    assert 0.0 <= float(logged["val/Delta1"]) <= 1.0
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"train/depth_strip", "train/camera_path", "val/depth_strip"} <= set(events.Tags()["images"])


def test_window_settings_scale_the_official_windows():
    from gemdepth.inference import WindowConfig
    from gemdepth.training.task import window_settings

    assert window_settings(32) == (32, 10, 8)
    for w in range(5, 40):
        window, overlap, interp = window_settings(w)
        WindowConfig(window, overlap, None, interp)  # accepted by the windowing
    with pytest.raises(ValueError, match="at least 5"):
        window_settings(4)


def test_visualisations_have_the_documented_shapes():
    from gemdepth.training.visualize import camera_path_image, colorize, depth_strip

    batch = make_batch(b=1, t=6)
    disp = 1.0 / batch["depth"][0]
    strip = depth_strip(batch["video"][0], disp, batch["valid"][0], disp * 3 + 1, max_frames=4)
    assert strip.shape == (3, 3 * 28, 4 * 28)
    assert 0.0 <= float(strip.min()) and float(strip.max()) <= 1.0
    # the aligned prediction of an affine copy gets the same colours as the ground truth
    assert torch.allclose(strip[:, 28:56], strip[:, 56:84], atol=1e-3)
    rgb = colorize(torch.linspace(0, 1, 10).view(1, 10), torch.tensor([[True] * 9 + [False]]))
    assert rgb.shape == (3, 1, 10) and float(rgb[:, 0, -1].abs().sum()) == 0.0
    img = camera_path_image(batch["extrinsics"][0], batch["extrinsics"][0])
    assert img.shape == (3, 192, 192)


@pytest.mark.parametrize("host,plugins", [("dav2", []), ("vda", [{"name": "astt", "num_heads": 2, "depth": 1}])])
def test_baselines_swap_by_config(host, plugins):
    cfg = {**tiny_model(), "host": host, "plugins": plugins}
    task = GemDepthTask(model=cfg, metrics=[])
    batch = make_batch()
    out = task.model(batch["video"])
    terms = task._losses(out, batch)
    assert "cam" not in terms and math.isfinite(float(terms["total"]))  # no GEM: no camera loss
    groups = build_param_groups(task.model, task.new_module_patterns, 1e-4, 1e-6, 0.01)
    assert [g["name"] for g in groups] == (["pretrained"] if not plugins else ["new", "pretrained"])


def test_clips_longer_than_the_window_use_windowed_inference():
    task = GemDepthTask(model=tiny_model(), metrics=["AbsRel", "Delta1"]).eval()  # window 8 frames
    batch = make_batch(b=1, t=12)
    with torch.no_grad():
        out = task.predict_step(batch, 0)
    assert out["depth"].shape == (1, 12, 28, 28)
    assert torch.isfinite(out["depth"]).all()
    with torch.no_grad():
        task.test_step(batch, 0)
    result = task.test_metrics["depth"].compute()
    assert 0.0 <= float(result["Delta1"]) <= 1.0


def test_validation_logs_the_metrics_skip_counters(caplog):
    """A clip without one valid ground-truth pixel is skipped by the metrics: counted, logged, warned."""
    from training_helpers import BatchList

    task = GemDepthTask(model=tiny_model(), metrics=["AbsRel", "TAE"], image_log_interval=0, warmup_steps=0)
    empty = make_batch(seed=5)
    empty["valid"][0] = False  # clip 0 has no valid depth at all
    val = torch.utils.data.DataLoader(BatchList([make_batch(seed=4), empty]), batch_size=None)
    trainer = _trainer(steps=1, val_check_interval=1, limit_val_batches=2)
    with caplog.at_level("WARNING"):
        trainer.fit(task, train_dataloaders=loader(1), val_dataloaders=val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if "/counts/" in k}
    skipped = {k: v for k, v in logged.items() if k.endswith("sequences_skipped")}
    scored = {k: v for k, v in logged.items() if k.endswith("sequences_scored")}
    assert skipped and all(v == 1.0 for v in skipped.values()), logged
    assert scored and all(v == 3.0 for v in scored.values()), logged  # 4 clips, one without depth
    assert "sequences_skipped=1" in caplog.text
