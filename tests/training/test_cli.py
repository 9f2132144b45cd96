"""The LightningCLI end to end: both stage configs shrunk to tiny sizes, ``test --ckpt`` with no
other flag, ``--print_config`` of the paper's recipe, SIGTERM + ``--ckpt_path last``, and DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import optimizer_fingerprint, tiny_model

from gemdepth.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
HERE = Path(__file__).resolve().parent
METRICS: list[str] = ["AbsRel", "Delta1", "TAE"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """Tiny synthetic shards: training (pose), pose-free and held-out, 4-frame clips at 56×56."""
    from gemdepth.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("shards")
    common = dict(frames=8, clip_length=4, size=(56, 56), clips_per_shard=2, progress=False)
    make_synthetic_corpus(root / "synthetic", sequences=3, seed=0, **common)
    make_synthetic_corpus(root / "synthetic_posefree", sequences=2, seed=1, pose_free=True, **common)
    make_synthetic_corpus(root / "synthetic_val", sequences=1, seed=2, **common)
    return root


def tiny_overrides(run: Path, shards: Path, stage: int, init_weights: str | None = None,
                   steps: int = 3, every_n: int = 100, extra_callbacks: list | None = None) -> dict:
    """What shrinks configs/stage{1,2}.yaml to a CPU run of a few steps on the tiny corpus."""
    sources = {"synthetic": {"path": str(shards / "synthetic")}}
    if stage == 2:
        sources["synthetic_posefree"] = {"path": str(shards / "synthetic_posefree")}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0,
                                "every_n_train_steps": every_n}}]
    return {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true",
            "max_steps": steps, "val_check_interval": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
            "enable_progress_bar": False, "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run), "name": "tb"}},
            "callbacks": callbacks + list(extra_callbacks or []),
        },
        "model": {"model": tiny_model(), "init_weights": init_weights, "init_partial": None,
                  "metrics": METRICS, "image_log_interval": 1, "warmup_steps": 1},
        "data": {
            "train_sources": sources,
            "val_sources": {"synthetic_val": {"path": str(shards / "synthetic_val"), "sky": "invalid"}},
            "test_sources": {"synthetic_val": {"path": str(shards / "synthetic_val"), "sky": "invalid"}},
            "batch_size": 2, "clip_length": 4, "short_side": 56, "sizes": [[56, 56]],
            "eval_size": [56, 56], "num_workers": 0, "samples_per_epoch": 16,
        },
    }


def _data(cfg: dict) -> dict:
    """The DataModule's init args of a dumped config (``data`` is a subclass argument)."""
    return cfg["data"].get("init_args", cfg["data"])


def _write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_print_config_shows_the_paper_recipe(capsys):
    assert main(["fit", "-c", str(CONFIGS / "stage1.yaml"), "--print_config"]) == 0
    s1 = yaml.safe_load(capsys.readouterr().out)
    assert main(["fit", "-c", str(CONFIGS / "stage2.yaml"), "--print_config"]) == 0
    s2 = yaml.safe_load(capsys.readouterr().out)
    for cfg in (s1, s2):
        m, d, t = cfg["model"], _data(cfg), cfg["trainer"]
        assert cfg["data"]["class_path"].endswith("VideoDataModule")
        assert m["model"]["host"] == "vda" and m["model"]["encoder"] == "vitl"
        assert m["lr_new"] == 1e-4 and m["lr_pretrained"] == 1e-6
        assert m["loss"]["alpha"] == 0.5 and m["loss"]["beta"] == 10.0
        assert "encoder.*" in m["freeze"]
        assert d["clip_length"] == 32 and d["short_side"] == 518 and d["max_depth"] == 400.0
        assert len(d["sizes"]) == 6
        assert t["strategy"] == "ddp" and t["precision"] == "bf16-mixed"
        assert d["batch_size"] * t["devices"] * t["num_nodes"] * (t.get("accumulate_grad_batches") or 1) == 16
    assert [p["name"] for p in s1["model"]["model"]["plugins"]] == ["gem", "astt"]
    assert s1["model"]["loss"]["gamma"] == 0.2 and s1["model"]["init_partial"] == "new-modules"
    assert set(_data(s1)["train_sources"]) == {"vkitti2", "tartanair", "pointodyssey", "mvs_synth", "dynamic_replica"}
    assert s2["model"]["loss"]["gamma"] == 0.0 and "plugins.gem.*" in s2["model"]["freeze"]
    assert s2["model"]["init_weights"].startswith("outputs/stage1/")
    assert set(_data(s2)["train_sources"]) == set(_data(s1)["train_sources"]) | {"irs", "stereo_videos"}


def test_both_stages_end_to_end_then_test_from_checkpoint_alone(tmp_path, corpora, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run1, run2 = tmp_path / "stage1", tmp_path / "stage2"
    cfg1 = _write(tmp_path / "tiny1.yaml", tiny_overrides(run1, corpora, 1))
    assert main(["fit", "-c", str(CONFIGS / "stage1.yaml"), "-c", cfg1]) == 0
    ckpt1 = run1 / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt1, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 3
    embedded = raw["gemdepth_config"]
    assert embedded["model"]["loss"]["gamma"] == 0.2
    assert _data(embedded)["train_sources"] == {"synthetic": {"path": str(corpora / "synthetic")}}
    assert (run1 / "tb" / "version_0" / "config.yaml").is_file()

    # stage 2: a new run from the stage-1 weights (not a resume), GEM frozen, no camera loss
    cfg2 = _write(tmp_path / "tiny2.yaml", tiny_overrides(run2, corpora, 2, init_weights=str(ckpt1)))
    assert main(["fit", "-c", str(CONFIGS / "stage2.yaml"), "-c", cfg2]) == 0
    ckpt2 = run2 / "checkpoints" / "last.ckpt"
    raw2 = torch.load(ckpt2, map_location="cpu", weights_only=True)
    assert raw2["global_step"] == 3  # counted from 0: not a resume
    gem = [k for k in raw["state_dict"] if k.startswith("model.plugins.gem.")]
    astt = [k for k in raw["state_dict"] if k.startswith("model.plugins.astt.")]
    assert gem and astt
    assert all(torch.equal(raw["state_dict"][k], raw2["state_dict"][k]) for k in gem)
    assert not all(torch.equal(raw["state_dict"][k], raw2["state_dict"][k]) for k in astt)

    # test with the checkpoint alone: model, data and trainer come from the embedded config
    (run2 / "stage1_gone").mkdir()
    ckpt1.rename(run2 / "stage1_gone" / "last.ckpt")  # init_weights must not be needed any more
    capsys.readouterr()
    assert main(["test", "--ckpt", str(ckpt2)]) == 0
    printed = capsys.readouterr().out
    for name in METRICS:
        assert f"test/{name}" in printed, printed[-2000:]
    assert main(["validate", f"--ckpt={ckpt2}"]) == 0


def test_test_without_test_data_is_a_clear_error(tmp_path, corpora, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_overrides(tmp_path / "run", corpora, 1, steps=1)
    cfg["data"]["test_sources"] = None
    assert main(["fit", "-c", _write(tmp_path / "c.yaml", cfg)]) == 0
    assert main(["test", "--ckpt", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 2
    assert "no test data" in capsys.readouterr().err


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_sigterm_saves_and_resume_continues(tmp_path, corpora):
    run = tmp_path / "run"
    marks = tmp_path / "marks"
    marker = {"class_path": "training_helpers.StepMarker", "init_args": {"out": str(marks), "delay": 0.3}}
    cfg = _write(tmp_path / "c.yaml", tiny_overrides(run, corpora, 1, steps=1000, extra_callbacks=[marker]))
    cmd = [sys.executable, "-m", "gemdepth", "fit", "-c", str(CONFIGS / "quickstart_stage1.yaml"), "-c", cfg,
           "--trainer.val_check_interval", "1000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            step = marks / "step"
            if step.is_file() and step.read_text() and int(step.read_text()) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    stopped = saved["global_step"]
    assert stopped >= 3
    assert saved["optimizer_states"][0]["state"]

    # resume in-process: global step and optimiser state continue from the checkpoint
    (marks / "started.json").unlink()
    fast = {"class_path": "training_helpers.StepMarker", "init_args": {"out": str(marks), "delay": 0.0}}
    cfg2 = _write(tmp_path / "c2.yaml", tiny_overrides(run, corpora, 1, steps=stopped + 2, extra_callbacks=[fast]))
    assert main(["fit", "-c", str(CONFIGS / "quickstart_stage1.yaml"), "-c", cfg2, "--ckpt_path", "last",
                 "--trainer.val_check_interval", "1000"]) == 0
    started = json.loads((marks / "started.json").read_text())
    assert started["global_step"] == stopped
    assert started["optimizer"] == pytest.approx(optimizer_fingerprint(saved["optimizer_states"]), rel=1e-6)
    final = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert final["global_step"] == stopped + 2


@pytest.mark.slow
def test_ddp_two_processes_stage1_then_stage2_freeze(tmp_path, corpora):
    """2-process CPU DDP (gloo), find_unused_parameters off: DDP raises if any trainable
    parameter got no gradient, so both stages passing shows the camera loss (stage 1, pose-free
    clips included) and the frozen GEM (stage 2) leave none unused."""
    run1, run2 = tmp_path / "s1", tmp_path / "s2"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    cfg1 = tiny_overrides(run1, corpora, 2, steps=3)  # stage-1 recipe on a mix with pose-free clips
    cmd = [sys.executable, "-m", "gemdepth", "fit", "-c", str(CONFIGS / "stage1.yaml"),
           "-c", _write(tmp_path / "c1.yaml", cfg1), *ddp]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "MEMBER: 2/2" in res.stdout + res.stderr  # really two processes
    ckpt1 = run1 / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt1, map_location="cpu", weights_only=True)["global_step"] == 3
    cfg2 = tiny_overrides(run2, corpora, 2, init_weights=str(ckpt1), steps=3)
    cmd = [sys.executable, "-m", "gemdepth", "fit", "-c", str(CONFIGS / "stage2.yaml"),
           "-c", _write(tmp_path / "c2.yaml", cfg2), *ddp]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s1 = torch.load(ckpt1, map_location="cpu", weights_only=True)["state_dict"]
    s2 = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    gem = [k for k in s1 if k.startswith("model.plugins.gem.")]
    assert all(torch.equal(s1[k], s2[k]) for k in gem)
    assert not all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("model.head."))


def test_an_unreadable_embedded_config_is_a_warning_naming_the_checkpoint(tmp_path, caplog):
    from gemdepth.training.cli import embedded_config

    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with caplog.at_level("WARNING"):
        assert embedded_config(bad) is None
    assert str(bad) in caplog.text and "embedded" in caplog.text


def test_fit_on_an_unfinished_corpus_is_a_message_not_a_traceback(tmp_path, corpora, monkeypatch, capsys):
    import json as _json
    import shutil

    monkeypatch.chdir(tmp_path)
    shards = tmp_path / "shards"
    shutil.copytree(corpora, shards)
    broken = shards / "synthetic"
    index = _json.loads((broken / "index.json").read_text())
    index["complete"] = False  # as an interrupted re-conversion leaves it
    (broken / "index.json").write_text(_json.dumps(index))
    cfg = tiny_overrides(tmp_path / "run", shards, 1, steps=1)
    assert main(["fit", "-c", str(CONFIGS / "quickstart_stage1.yaml"), "-c", _write(tmp_path / "c.yaml", cfg)]) == 1
    err = capsys.readouterr().err
    assert "gemdepth fit:" in err and str(broken) in err and "--resume" in err
    assert "Traceback" not in err
