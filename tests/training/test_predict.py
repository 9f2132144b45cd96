"""``gemdepth predict`` through LightningCLI: a tiny fit, then ``predict --ckpt`` writes one
``.npz`` per whole clip whose values equal a direct forward of the checkpoint's model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_helpers import tiny_model

from gemdepth.cli import main
from gemdepth.data import read_clips

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Tiny shards (train: 4-frame clips; held out: 8-frame clips, all 56×56) and a 2-step fit."""
    from gemdepth.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("predict")
    common = dict(size=(56, 56), clips_per_shard=2, progress=False)
    make_synthetic_corpus(root / "train", sequences=2, frames=4, clip_length=4, seed=0, **common)
    make_synthetic_corpus(root / "heldout", sequences=2, frames=8, clip_length=8, seed=5, **common)
    run = root / "run"
    cfg = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run), "name": "tb"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                                         "save_top_k": 0}}],
        },
        "model": {"model": tiny_model(), "metrics": [], "image_log_interval": 0, "warmup_steps": 1},
        "data": {
            "train_sources": {"train": {"path": str(root / "train")}},
            "test_sources": {"heldout": {"path": str(root / "heldout")}},
            "batch_size": 1, "clip_length": 4, "short_side": 56, "sizes": [[56, 56]],
            "eval_size": [56, 56], "num_workers": 0, "samples_per_epoch": 2,
        },
    }
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "-c", str(path)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return {"root": root, "run": run, "ckpt": ckpt}


def _direct(model: torch.nn.Module, clip: dict) -> tuple[np.ndarray, np.ndarray]:
    """Depth and extrinsics of one forward on the clip, normalised here (no crop: 56×56 at short side 56)."""
    video = (clip["rgb"].astype(np.float32) / 255.0 - MEAN) / STD  # (T, H, W, 3)
    with torch.no_grad():
        out = model(torch.from_numpy(video).permute(0, 3, 1, 2)[None])
    return out.depth[0].numpy(), out.extrinsics[0].numpy()


def _check_files(folder: Path, clips: list[dict], ckpt: Path) -> None:
    from gemdepth import load_model

    files = sorted(folder.glob("*.npz"))
    assert [f.stem for f in files] == sorted(c["__key__"] for c in clips)
    assert not list(folder.glob(".*")), "temporary files left behind"
    model = load_model(ckpt)
    direct = [_direct(model, clip) for clip in clips]
    for i, clip in enumerate(clips):
        with np.load(folder / f"{clip['__key__']}.npz") as z:
            assert set(z.files) == {"disparity", "key", "extrinsics", "intrinsics"}
            assert str(z["key"]) == clip["__key__"]
            t, h, w = clip["depth"].shape
            disp = z["disparity"].astype(np.float32)
            assert z["disparity"].dtype == np.float16 and disp.shape == (t, h, w)  # the whole clip
            assert z["extrinsics"].shape == (t, 4, 4) and z["intrinsics"].shape == (t, 3, 3)
            depth, extr = direct[i]
            # float16 keeps 11 significant bits: relative error <= 2**-11
            np.testing.assert_allclose(disp, depth, rtol=1e-3, atol=1e-6)
            np.testing.assert_allclose(z["extrinsics"], extr, atol=1e-4)
            # the comparison tells clips apart: another clip's forward is far outside the tolerance
            other = direct[(i + 1) % len(clips)][0]
            assert np.abs(disp - other[: len(disp)]).max() > 5e-3 * np.abs(depth).max()


def test_predict_from_checkpoint_alone_writes_whole_clips(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--ckpt", str(trained["ckpt"])]) == 0
    folders = sorted(trained["run"].glob("tb/version_*/predictions"))
    assert len(folders) == 1, folders
    clips = list(read_clips(trained["root"] / "heldout"))
    assert len(clips) == 2 and clips[0]["depth"].shape[0] == 8  # longer than training's 4 frames
    _check_files(folders[0], clips, trained["ckpt"])


def test_predict_sources_and_folder_override(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "preds"
    sources = json.dumps({"train": {"path": str(trained["root"] / "train")}})
    assert main(["predict", f"--ckpt={trained['ckpt']}", "--data.predict_sources", sources,
                 "--predict_dir", str(out)]) == 0
    _check_files(out, list(read_clips(trained["root"] / "train")), trained["ckpt"])


def test_predict_without_any_data_is_a_clear_error(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--ckpt", str(trained["ckpt"]), "--data.test_sources", "null"]) == 2
    assert "no predict data" in capsys.readouterr().err
