"""``gemdepth data``: synth, inspect, convert driven through ``main``."""

from __future__ import annotations

import json
import re
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


# --------------------------------------------------------------------------- bad shards, clear errors
def _corpus_with_bad_sample(folder: Path, edit) -> str:
    """A one-clip corpus plus a shard (listed in the index) holding a clip edited by ``edit``
    (sample dict -> None). Returns the bad sample's key."""
    from shard_helpers import register_raw_shard

    from gemdepth.data import write_corpus
    from gemdepth.data.shards import _encode_clip
    from gemdepth.data.synthetic import iter_synthetic_clips

    clips = list(iter_synthetic_clips(2, frames=4, clip_length=4, size=(40, 48), seed=0))
    write_corpus(clips[:1], folder, "synthetic", progress=False)
    key = "synthetic__edited__0"
    sample = _encode_clip(clips[1], key, 95)
    edit(sample)
    register_raw_shard(folder / "edited.tar", [sample], corpus="synthetic")
    return key


def _png(values: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, expect", [
    ("8-bit depth", r"field 'depth': depth PNG is 8-bit greyscale.*only 16-bit"),
    ("depth size", r"field 'depth': frame 2 is 24x20 \(WxH\) but the clip's image size is 48x40"),
])
def test_inspect_names_shard_and_sample_of_mis_encoded_depth(tmp_path: Path, capsys, case: str,
                                                             expect: str) -> None:
    def edit(sample: dict) -> None:
        if case == "8-bit depth":  # what a foreign tool writing "depth.png" as uint8 gives
            sample["depth.0001.png"] = _png(np.full((40, 48), 90, np.uint8))
        else:
            from gemdepth.data.shards import _encode_depth

            sample["depth.0002.png"] = _encode_depth(np.ones((20, 24), np.float32))

    key = _corpus_with_bad_sample(tmp_path, edit)
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "s.png")]) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if key in ln]
    assert f"shard {tmp_path / 'edited.tar'}, sample {key}" in line
    assert re.search(expect, line), line
    assert "Traceback" not in err


def test_readers_refuse_an_interrupted_conversion_naming_resume(tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    """``data convert`` killed mid-way over an existing corpus: inspect (and every reader)
    refuses the folder naming the exact `--resume` command; resuming finishes it with the same
    shards a fresh conversion writes."""
    import gemdepth.data.shards as shards_mod
    from test_converters import write_tum_layout

    raw = tmp_path / "raw" / "rgbd_dataset_freiburg1_desk"
    write_tum_layout(raw, lambda c2w: c2w)
    out = tmp_path / "tum"
    argv = ["convert", "tum", str(tmp_path / "raw"), str(out), "--clip-length", "1",
            "--clips-per-shard", "1", "-o", "intrinsics=24,24,15.5,11.5"]
    assert main(argv) == 0
    fresh = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert len(fresh) == 4

    real, calls = shards_mod._write_shard, [0]

    def killed_on_third_shard(path, samples):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(path, samples)

    monkeypatch.setattr(shards_mod, "_write_shard", killed_on_third_shard)
    capsys.readouterr()
    assert main(argv) == 130
    monkeypatch.undo()
    resume_cmd = ("gemdepth data convert tum " + str(tmp_path / "raw") + " " + str(out)
                  + " --clip-length 1 --stride 1 --clips-per-shard 1 -o intrinsics=24,24,15.5,11.5"
                  " --resume")
    assert resume_cmd in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: corpus 'tum' is incomplete" in err and f"`{resume_cmd}`" in err
    assert "Traceback" not in err and "all" not in err
    assert main(["inspect", str(out / "tum-000003.tar")]) == 1  # an old shard on its own too
    assert "incomplete" in capsys.readouterr().err

    changed = argv[:-1] + ["intrinsics=25,25,15.5,11.5", "--resume"]
    assert main(changed) == 1
    assert "only finishes the same conversion" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == fresh
    assert main(["inspect", str(out), "--out", str(tmp_path / "s.png")]) == 0


def test_convert_help_lists_formats_and_their_options(capsys) -> None:
    import inspect as pyinspect

    from gemdepth.data.converters import CONVERTERS

    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out
    for name, conv in CONVERTERS.items():
        assert re.search(rf"^  {name} +{conv.role}: ", out, re.M), name
        params = [p for p in pyinspect.signature(conv.iter_clips).parameters.values()
                  if p.kind == p.KEYWORD_ONLY]
        assert [o[0] for o in conv.options] == [p.name for p in params]
        for opt, default, meaning in conv.options:
            assert meaning, f"{name}: option {opt} has no description"
            shown = ("none" if default is None else str(default).lower()
                     if isinstance(default, bool) else ",".join(map(str, default))
                     if isinstance(default, tuple) else str(default))
            assert f"-o {opt}=...  (default {shown})  {meaning}" in out, (name, opt)
    assert "-o camera=...  (default none)  fr1, fr2, fr3" in out


def _dynamic_corpus(out: Path, fraction: float) -> float:
    """A static synthetic clip where, in every other frame, a block covering ``fraction`` of
    the image moved 40 % closer (a person walking through, in depth). Returns the share of
    the clip's compared pixels this block makes disagree, computed independently from the
    painted region and the pixels that warp between frames."""
    from gemdepth.data import write_corpus
    from gemdepth.data.synthetic import SynthConfig, iter_synthetic_clips

    (clip,) = list(iter_synthetic_clips(1, frames=4, clip_length=4, size=(40, 48), seed=0,
                                        config=SynthConfig(moving_fraction=0.0)))
    w = 48
    cols = int(round(w * fraction))
    for t in (1, 3):
        clip["depth"][t, :, :cols] *= 0.6
    write_corpus([clip], out, "synthetic", progress=False)
    return cols / w


def test_inspect_verdict_on_moving_content_reports_the_fraction(tmp_path: Path, capsys) -> None:
    from gemdepth.data import read_clips
    from gemdepth.data.consistency import check_clip

    share = _dynamic_corpus(tmp_path, 0.5)
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    result = check_clip(next(read_clips(tmp_path)))  # the same clip, checked directly
    assert not result["passed"]
    frac = result["inconsistent"] / result["compared"]
    assert abs(frac - share) < 0.15  # about the moved block: the rest of the view agrees
    bad = sum(not p["passed"] for p in result["pairs"])
    assert (f"1 FAILED: {frac:.1%} of their compared pixels are inconsistent "
            f"({result['inconsistent']} of {result['compared']}; {bad} of 3 frame pairs "
            "fail). Moving content (people, vehicles: a dynamic scene) can cause this") in out
    assert "if a static stretch of the same sequence passes with the same poses" in out
    assert f"inconsistent px {frac:.1%}" in out  # per clip too
    assert "(poses, intrinsics or depth units disagree)" not in out


def test_synth_resume_finishes_an_interrupted_run(tmp_path: Path, capsys, monkeypatch) -> None:
    import gemdepth.data.shards as shards_mod

    assert _synth(tmp_path / "fresh", "--clips-per-shard", "1") == 0
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fresh").glob("*.tar")}
    real, calls = shards_mod._write_shard, [0]

    def killed_on_second_shard(path, samples):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(path, samples)

    monkeypatch.setattr(shards_mod, "_write_shard", killed_on_second_shard)
    capsys.readouterr()
    assert _synth(tmp_path / "out", "--clips-per-shard", "1") == 130
    monkeypatch.undo()
    assert "--resume`" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "gemdepth data synth --out" in err and "--clips-per-shard 1 --resume`" in err
    assert _synth(tmp_path / "out", "--clips-per-shard", "1", "--resume") == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")} == fresh
