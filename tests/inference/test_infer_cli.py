"""``gemdepth infer`` end to end with a real (mini) model: a checkpoint, official weights, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from infer_fakes import make_frames, parse_ply, write_folder, write_video

from gemdepth.cli import main as gemdepth_main
from gemdepth.inference.cli import main

MINI_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "official_mini_gemdepth.yaml"


def test_infer_video_and_folder(tmp_path: Path, mini_checkpoint: Path) -> None:
    frames = make_frames(40, 36, 48, noise=0.0)
    video = write_video(tmp_path / "walk.mp4", frames, "libx264", "yuv420p", fps=20)
    folder = write_folder(tmp_path / "shots", frames[:7])
    out = tmp_path / "out"
    code = gemdepth_main(
        [
            "infer",
            str(video),
            str(folder),
            "--ckpt",
            str(mini_checkpoint),
            "--out",
            str(out),
            "--input-size",
            "28",
            "--stride",
            "2",
            "--png16",
            "--no-progress",
        ]
    )
    assert code == 0
    walk = out / "walk"
    assert {p.name for p in walk.iterdir()} >= {
        "depth.npz",
        "depth.mp4",
        "cameras.npz",
        "cameras.json",
        "points.ply",
        "depth_png16",
        "run.json",
    }
    with np.load(walk / "depth.npz") as z:
        assert z["depth"].shape == (20, 36, 48) and z["depth"].dtype == np.float16
        assert float(z["fps"]) == 10.0
        np.testing.assert_array_equal(z["frame_indices"], np.arange(0, 40, 2))
        assert np.isfinite(z["depth"]).all() and z["depth"].min() >= 0
    with np.load(walk / "cameras.npz") as c:
        assert c["extrinsics"].shape == (20, 4, 4) and c["intrinsics"].shape == (20, 3, 3)
        np.testing.assert_allclose(c["extrinsics"][:, 3], np.tile([0, 0, 0, 1], (20, 1)))
    run = json.loads((walk / "run.json").read_text())
    assert run["frames"] == 20 and run["network_input"] == [28, 42] and run["frames_per_second"] > 0
    assert len(parse_ply(walk / "points.ply")) > 0
    with np.load(out / "shots" / "depth.npz") as z:  # a 7-frame folder: shorter than one window
        assert z["depth"].shape == (4, 36, 48)


def test_infer_official_weights_with_model(tmp_path: Path, official_dir: Path) -> None:
    frames = make_frames(30, 36, 48, noise=0.0)
    folder = write_folder(tmp_path / "clip", frames)
    code = main(
        [
            str(folder),
            "--ckpt",
            str(official_dir / "gemdepth_mini.safetensors"),
            "--model",
            str(MINI_CONFIG),
            "--out",
            str(tmp_path / "out"),
            "--input-size",
            "28",
            "--no-video",
            "--no-ply",
            "--no-progress",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out" / "clip").iterdir()) == [
        "cameras.json",
        "cameras.npz",
        "depth.npz",
        "run.json",
    ]


def test_bad_inputs_are_reported_without_outputs(tmp_path: Path, mini_checkpoint: Path, capsys) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noimages").mkdir()
    mixed = write_folder(tmp_path / "mixed", make_frames(3, 20, 30))
    write_folder(tmp_path / "odd", make_frames(1, 22, 30))
    (tmp_path / "odd" / "frame0.png").rename(mixed / "frame9.png")
    good = write_folder(tmp_path / "good", make_frames(3, 20, 30))
    out = tmp_path / "out"
    code = main(
        [
            str(tmp_path / "empty.mp4"),
            str(tmp_path / "noimages"),
            str(mixed),
            str(good),
            "--ckpt",
            str(mini_checkpoint),
            "--out",
            str(out),
            "--input-size",
            "28",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "empty.mp4: the file is empty" in err
    assert "noimages: the folder has no images" in err
    assert "frame9.png: image is 22x30" in err
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # only the good input got a folder


def test_usage_errors(tmp_path: Path, mini_checkpoint: Path, capsys) -> None:
    folder = write_folder(tmp_path / "clip", make_frames(3, 20, 30))
    assert main([str(folder), "--ckpt", str(mini_checkpoint), "--out", str(tmp_path / "o"), "--overlap", "40"]) == 2
    assert "overlap must be in" in capsys.readouterr().err
    assert (
        main([str(folder), "--ckpt", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    )
    assert "cannot load" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folder), "--ckpt", "x", "--out", "o", "--fps", "5", "--stride", "2"])
    assert not (tmp_path / "o").exists()
