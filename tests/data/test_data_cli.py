"""``gemdepth data``: synth, inspect, convert driven through ``main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemdepth.cli import main as gemdepth_main
from gemdepth.data import read_clips
from gemdepth.data.cli import colourise_depth, main


def _synth(out: Path, *extra: str) -> int:
    return main(["synth", "--out", str(out), "--sequences", "2", "--frames", "8",
                 "--clip-length", "4", "--size", "40x48", "--seed", "3", "--workers", "1", *extra])


def test_synth_and_inspect(tmp_path: Path, capsys) -> None:
    assert _synth(tmp_path / "synthetic") == 0
    index = json.loads((tmp_path / "synthetic" / "index.json").read_text())
    assert index["clips"] == 4 and index["frames"] == 16 and index["has_pose"] is True
    assert index["image_sizes"] == [[40, 48]]
    assert _synth(tmp_path / "free", "--pose-free") == 0
    assert all(c["extrinsics"] is None for c in read_clips(tmp_path / "free"))
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert gemdepth_main(["data", "inspect", str(tmp_path), "--out", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "corpus synthetic: 4 clips, 16 frames, 2 sequences, sizes 40x48" in out
    assert "corpus synthetic_posefree: 4 clips" in out and "all 8 clips valid" in out
    img = np.asarray(Image.open(sheet))
    assert img.shape == (80, 4 * 48, 3)  # 4 frames: RGB row over depth row
    first = next(read_clips(tmp_path / "free"))  # inspect draws the first clip it reads
    np.testing.assert_array_equal(img[:40, 48:96], first["rgb"][1])


def test_inspect_reports_corruption(tmp_path: Path, capsys) -> None:
    assert _synth(tmp_path) == 0
    shard = tmp_path / "synthetic-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "synthetic-000000.tar" in err and "checksum mismatch" in err


def test_inspect_empty_folder(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no shards" in capsys.readouterr().err


def test_synth_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--size", "big"])
    assert main(["synth", "--out", str(tmp_path), "--frames", "2", "--clip-length", "4"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_convert_calls_the_converter_registry(tmp_path: Path, monkeypatch, capsys) -> None:
    import gemdepth.data.converters as converters

    calls = []

    def fake(fmt, root, out, clip_length=32, stride=1, **options):
        calls.append((fmt, Path(root), Path(out), clip_length, stride, options))
        if fmt == "nope":
            raise ValueError("unknown format 'nope'")
        return {"clips": 3, "frames": 24, "corpus": fmt, "shards": [{}]}

    monkeypatch.setattr(converters, "run_converter", fake)
    assert main(["convert", "tum", str(tmp_path / "in"), str(tmp_path / "out"),
                 "--clip-length", "8", "--stride", "2", "-o", "max_depth=10", "-o", "sky=true"]) == 0
    assert calls[0] == ("tum", tmp_path / "in", tmp_path / "out", 8, 2,
                        {"clips_per_shard": 8, "max_depth": 10, "sky": True})
    assert "wrote 3 clips / 24 frames of corpus tum" in capsys.readouterr().out
    assert main(["convert", "nope", str(tmp_path), str(tmp_path / "o")]) == 1
    assert "unknown format" in capsys.readouterr().err


def test_colourise_depth_orders_near_and_far() -> None:
    depth = np.array([[1.0, 2.0, 50.0, 0.0]], np.float32)
    rgb = colourise_depth(depth)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 3] == 0).all()  # invalid is black
    assert rgb[0, 0, 0] > rgb[0, 2, 0] and rgb[0, 2, 2] > rgb[0, 0, 2]  # near red, far blue


def _static_corpus(out: Path, invert: bool = False) -> None:
    """Two static synthetic scenes (no moving objects); ``invert``: camera-to-world poses stored
    where world-to-camera belong (the classic convention error)."""
    from gemdepth.data import write_corpus
    from gemdepth.data.synthetic import SynthConfig, iter_synthetic_clips

    clips = list(iter_synthetic_clips(2, frames=4, clip_length=4, size=(40, 48), seed=0,
                                      config=SynthConfig(moving_fraction=0.0)))
    if invert:
        for clip in clips:
            clip["extrinsics"] = np.linalg.inv(clip["extrinsics"].astype(np.float64)).astype(np.float32)
    write_corpus(clips, out, "synthetic", progress=False)


def test_inspect_geometry_check_passes_a_consistent_corpus(tmp_path: Path, capsys) -> None:
    _static_corpus(tmp_path / "ok")
    assert _synth(tmp_path / "free", "--pose-free") == 0  # pose-free: nothing to check
    capsys.readouterr()
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "s.png"), "--strict"]) == 0
    out = capsys.readouterr().out
    assert out.count(": PASS over 3 pairs (gap 1)") == 2
    assert "synthetic__scene-000000__0: PASS" in out and "synthetic__scene-000001__0: PASS" in out
    assert "geometry check: PASS, 2/2 clips consistent" in out
    assert "geometry check: 2/2 checked clips consistent" in out
    free = out[out.index("corpus synthetic_posefree"):].split("\n")
    block = [free[0]] + [line for line in free[1:] if line.startswith("  ")][:3]
    assert len(block) == 4 and not any("geometry" in line for line in block)  # nothing to check


def test_inspect_geometry_check_fails_inverted_poses(tmp_path: Path, capsys) -> None:
    _static_corpus(tmp_path, invert=True)
    sheet = str(tmp_path / "s.png")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path), "--out", sheet, "--check", "1"]) == 0  # report only
    out = capsys.readouterr().out
    assert out.count(": FAIL over 3 pairs") == 1 and "median relative disagreement" in out
    assert "geometry check: FAIL, 0/1 clips consistent" in out
    assert "geometry check: 0/1 checked clips consistent, 1 FAILED" in out

    assert main(["inspect", str(tmp_path), "--out", sheet, "--strict"]) == 1
    captured = capsys.readouterr()
    assert "geometry check: 0/2 checked clips consistent, 2 FAILED" in captured.out
    assert "2 clip(s) failed the geometry check (--strict)" in captured.err

    assert main(["inspect", str(tmp_path), "--out", sheet, "--strict", "--check", "0"]) == 0
    out = capsys.readouterr().out
    assert "geometry check" not in out and "FAIL" not in out and "all 2 clips valid" in out
