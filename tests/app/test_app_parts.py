"""The app's parts that need no server: reading result folders, the GLB, the upload checks,
the command line's usage errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from glb_reader import read_glb
from PIL import Image

from gemdepth.app.inputs import AppLimits, LimitedSource, extract_frames_zip, open_upload
from gemdepth.app.results import (
    ResultError,
    ResultFolder,
    camera_centres,
    find_results,
    npz_member_memmap,
    read_ply,
    subsample_points,
    write_points_glb,
)
from gemdepth.inference.pointcloud import write_ply
from gemdepth.inference.readers import InputError


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_memmap_matches_numpy(tmp_path: Path, compression: int) -> None:
    depth = np.random.default_rng(0).random((5, 7, 9)).astype(np.float16)
    path = tmp_path / "depth.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, value in {"fps": np.float64(12.0), "depth": depth}.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:  # zip64 extra field, as the writers
                np.lib.format.write_array(member, value)
    got = npz_member_memmap(path, "depth")
    assert isinstance(got, np.memmap) == (compression == zipfile.ZIP_STORED)
    with np.load(path) as z:
        np.testing.assert_array_equal(got, z["depth"])
    with pytest.raises(ResultError, match="has no array 'cameras'"):
        npz_member_memmap(path, "cameras")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultError, match="bad.npz: cannot be read as an npz"):
        npz_member_memmap(tmp_path / "bad.npz", "depth")


def test_ply_round_trip_and_subsample(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(1000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (1000, 3)).astype(np.uint8)
    write_ply(tmp_path / "p.ply", xyz, rgb, comment="test")
    got_xyz, got_rgb = read_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(got_xyz, xyz)
    np.testing.assert_array_equal(got_rgb, rgb)
    sub_xyz, sub_rgb = subsample_points(xyz, rgb, 100)
    assert sub_xyz.shape == (100, 3)
    rows = {tuple(r) for r in np.concatenate([xyz, rgb], 1).tolist()}
    assert all(tuple(r) in rows for r in np.concatenate([sub_xyz, sub_rgb], 1).tolist())  # a true subset
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ResultError, match="only binary little-endian"):
        read_ply(tmp_path / "a.ply")


def _extrinsics(n: int) -> np.ndarray:
    """World-to-camera poses of a camera moving along +x while turning about y."""
    out = np.tile(np.eye(4), (n, 1, 1))
    for t in range(n):
        a = 0.1 * t
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        centre = np.array([0.5 * t, 0.0, 0.2 * t])
        out[t, :3, :3] = rot
        out[t, :3, 3] = -rot @ centre
    return out


def test_camera_centres_and_glb(tmp_path: Path) -> None:
    extr = _extrinsics(10)
    np.testing.assert_allclose(camera_centres(extr), [[0.5 * t, 0, 0.2 * t] for t in range(10)], atol=1e-12)
    k = np.tile(np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]]), (10, 1, 1))
    xyz = np.random.default_rng(2).normal(size=(300, 3)).astype(np.float32)
    rgb = np.full((300, 3), [255, 0, 128], np.uint8)
    gltf, arrays = read_glb(write_points_glb(tmp_path / "c.glb", xyz, rgb, extr, k, frusta=5))
    points, path, frusta = gltf["meshes"][0]["primitives"]
    assert [points["mode"], path["mode"], frusta["mode"]] == [0, 3, 1]
    assert "KHR_materials_unlit" in gltf["extensionsUsed"]
    np.testing.assert_array_equal(arrays[points["attributes"]["POSITION"]], xyz * np.float32([1, -1, -1]))
    np.testing.assert_allclose(arrays[points["attributes"]["COLOR_0"]][0], [1.0, 0.0, 0.2158605], atol=1e-6)
    np.testing.assert_allclose(arrays[path["attributes"]["POSITION"]], camera_centres(extr) * [1, -1, -1], atol=1e-6)
    segments = arrays[frusta["attributes"]["POSITION"]].reshape(-1, 2, 3)
    assert segments.shape[0] == 5 * 8  # 5 cameras × (4 rays + 4 rim edges)
    np.testing.assert_allclose(segments[0, 0], camera_centres(extr)[0] * [1, -1, -1], atol=1e-6)  # from the centre
    with pytest.raises(ResultError, match="no points"):
        write_points_glb(tmp_path / "e.glb", xyz[:0], rgb[:0])


def _png(value: int, size: tuple[int, int] = (20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_zip_extraction_names_the_files_itself(tmp_path: Path) -> None:
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape10.png", _png(10))
        zf.writestr("/abs/escape2.png", _png(2))
        zf.writestr("x/.hidden.png", _png(99))
        zf.writestr("notes.md", "x")
    dest = extract_frames_zip(archive, tmp_path / "out", AppLimits(), "frames.zip")
    assert sorted(p.name for p in dest.iterdir()) == ["000000.png", "000001.png"]
    assert not (tmp_path.parent / "escape10.png").exists() and not Path("/abs").exists()
    # natural order of the archive paths: /abs/escape2 < ../../escape10 is decided by the full path
    values = [int(np.asarray(Image.open(dest / n))[0, 0, 0]) for n in ("000000.png", "000001.png")]
    assert sorted(values) == [2, 10]
    with pytest.raises(InputError, match="3 images, more than this app's limit of 2"):
        with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
            for i in range(3):
                zf.writestr(f"{i}.png", _png(i))
        extract_frames_zip(tmp_path / "many.zip", tmp_path / "o2", AppLimits(max_zip_files=2), "many.zip")


def test_open_upload_refuses_and_limits(tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    with pytest.raises(InputError, match=r"^doc.pdf: not a video or a zip of frames; upload a video \(\.mp4"):
        open_upload(tmp_path / "doc.pdf", tmp_path / "w", AppLimits())
    archive = tmp_path / "f.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.png", _png(i))
    with pytest.raises(InputError, match="f.zip: 5 frames at stride 1, more than this app's limit of 4; "
                                         "use a frame stride of at least 2"):
        open_upload(archive, tmp_path / "w", AppLimits(max_frames=4))
    assert open_upload(archive, tmp_path / "w2", AppLimits(max_frames=4), stride=2).frame_count == 3

    class Unknown(list):
        name, path = "u", Path("u")

    limited = LimitedSource(Unknown([np.zeros((2, 2, 3), np.uint8)] * 3), 2, "clip.webm")
    assert limited.name == "u"
    with pytest.raises(InputError, match="clip.webm: longer than this app's limit of 2 frames"):
        list(limited)


def test_results_folder_errors_and_discovery(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="no such folder"):
        find_results(tmp_path / "missing")
    with pytest.raises(ResultError, match="no gemdepth infer outputs"):
        find_results(tmp_path)
    with pytest.raises(ResultError, match="no depth.npz here"):
        ResultFolder(tmp_path)
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "depth.npz", depth=np.ones((2, 4, 6), np.float16), range=np.array([0.5, 2.0]))
    assert find_results(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert find_results(tmp_path / "a") == [tmp_path / "a"]
    folder = ResultFolder(tmp_path / "a")
    assert folder.frames == 2 and folder.cameras() is None and folder.viewer_glb(tmp_path / "x.glb", 10) is None
    assert "No cameras.json or points.ply" in folder.summary()


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gradio", reason="gemdepth app needs Gradio")
    from gemdepth.cli import main

    assert main(["app", "--results", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such folder" in capsys.readouterr().err
    assert main(["app", "--ckpt", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err
    assert main(["app", "--no-mini"]) == 2
    assert "nothing to offer" in capsys.readouterr().err


def test_model_menu_labels() -> None:
    from gemdepth.app.models import UNTRAINED_MINI, choices_from_args

    hub = choices_from_args([], "vda-vits")  # nothing is downloaded until the model is first used
    assert [c.untrained for c in hub] == [False, True]
    assert hub[0].label.startswith("vda-vits (released weights") and hub[1].label == UNTRAINED_MINI
    no_weights = choices_from_args([], "gemdepth-vda-vits", mini=False)
    assert len(no_weights) == 1 and no_weights[0].untrained
    assert no_weights[0].label.startswith("untrained gemdepth-vda-vits (random weights")
    with pytest.raises(KeyError, match="unknown model preset 'nope'"):
        choices_from_args([], "nope")
