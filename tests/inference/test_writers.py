"""Writers round trip (npz, cameras, PNG16, EXR, mp4, PLY) and the pipeline's atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from infer_fakes import FakeVideoModel, make_frames, parse_ply
from PIL import Image

from gemdepth.inference import FrameResult, InferenceOptions, OutputOptions, PointCloudFuser, run_source
from gemdepth.inference.readers import FrameSource, InputError
from gemdepth.inference.writers import (
    CamerasWriter,
    DepthNpzWriter,
    DepthRange,
    DepthVideoWriter,
    ExrWriter,
    Png16Writer,
    colorize,
    exr_available,
)


def _result(
    i: int, depth: np.ndarray, image: np.ndarray | None = None, cams: bool = True, tx: float = 0.0
) -> FrameResult:
    h, w = depth.shape
    extr = np.eye(4, dtype=np.float32)
    extr[0, 3] = -tx  # camera centre at (tx, 0, 0)
    intr = np.array([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]], dtype=np.float32)
    return FrameResult(i, depth.astype(np.float32), image, extr if cams else None, intr if cams else None)


def test_depth_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    depths = rng.uniform(0, 5, (7, 12, 16)).astype(np.float32)
    writer = DepthNpzWriter(tmp_path / "depth.npz", 12, 16, fps=12.5)
    for i, d in enumerate(depths):
        writer.add(_result(i, d), source_index=10 + 2 * i)
        assert not (tmp_path / "depth.npz").exists()  # nothing final until commit
    writer.commit()
    with np.load(tmp_path / "depth.npz") as z:
        assert z["depth"].dtype == np.float16 and z["depth"].shape == (7, 12, 16)
        np.testing.assert_allclose(z["depth"], depths, rtol=1e-3)
        assert float(z["fps"]) == 12.5
        np.testing.assert_array_equal(z["frame_indices"], 10 + 2 * np.arange(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.npz"]  # no temporaries left


def test_cameras_round_trip(tmp_path: Path) -> None:
    writer = CamerasWriter(tmp_path, 12, 16, fps=30.0, chained=True)
    results = [_result(i, np.ones((12, 16)), tx=0.1 * i) for i in range(5)]
    for r in results:
        writer.add(r, r.index)
    writer.commit()
    with np.load(tmp_path / "cameras.npz") as z:
        np.testing.assert_allclose(z["extrinsics"], np.stack([r.extrinsics for r in results]))
        np.testing.assert_allclose(z["intrinsics"], np.stack([r.intrinsics for r in results]))
        np.testing.assert_array_equal(z["image_size"], [12, 16])
    doc = json.loads((tmp_path / "cameras.json").read_text())
    assert doc["image_size"] == [12, 16] and "world-to-camera" in doc["convention"]
    assert [f["index"] for f in doc["frames"]] == list(range(5))
    np.testing.assert_allclose(doc["frames"][3]["extrinsics"], results[3].extrinsics, atol=1e-7)
    np.testing.assert_allclose(doc["frames"][3]["intrinsics"], results[3].intrinsics, atol=1e-6)


def test_png16_and_exr_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    depths = rng.uniform(0, 2, (3, 10, 14)).astype(np.float32)
    scale = DepthRange.from_depths(list(depths[:2]))
    png = Png16Writer(tmp_path, scale)
    depths[2, 0, 0] = 10 * scale.peak  # beyond the 2× headroom: clipped and counted
    for i, d in enumerate(depths):
        png.add(_result(i, d), i)
    png.commit()
    meta = json.loads((tmp_path / "depth_png16" / "scale.json").read_text())
    assert meta["clipped_pixels"] == 1
    back = np.stack([np.asarray(Image.open(tmp_path / "depth_png16" / f"{i:06d}.png")) for i in range(3)])
    assert back.dtype == np.uint16
    ok = np.ones_like(depths, bool)
    ok[2, 0, 0] = False
    np.testing.assert_allclose(back[ok] / meta["scale"], depths[ok], atol=0.51 / meta["scale"])
    if not exr_available():
        pytest.skip("OpenEXR is not installed")
    import OpenEXR

    exr = ExrWriter(tmp_path)
    for i, d in enumerate(depths):
        exr.add(_result(i, d), i)
    exr.commit()
    pixels = OpenEXR.File(str(tmp_path / "depth_exr" / "000002.exr")).channels()["Z"].pixels
    np.testing.assert_array_equal(pixels, depths[2])


def test_depth_video_shows_frames_and_colourised_depth(tmp_path: Path) -> None:
    frames = make_frames(6, 30, 41, noise=0.0)  # odd width: padded to even sizes
    yy = np.linspace(0.2, 3.0, 30, dtype=np.float32)[:, None].repeat(41, 1)
    scale = DepthRange(0.2, 3.0, 3.0)
    writer = DepthVideoWriter(tmp_path / "depth.mp4", 30, 41, fps=10, scale=scale)
    for i, f in enumerate(frames):
        writer.add(_result(i, yy, f), i)
    writer.commit()
    with av.open(str(tmp_path / "depth.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape[0] == 6 and decoded.shape[1] % 2 == 0 and decoded.shape[2] == 2 * (decoded.shape[2] // 2)
    half = decoded.shape[2] // 2
    colour = np.asarray(
        Image.fromarray(colorize(yy, scale)).resize((half, decoded.shape[1]), Image.Resampling.BILINEAR)
    )
    assert np.abs(decoded[3, :, half:].astype(int) - colour).mean() < 12
    src = np.asarray(Image.fromarray(frames[3]).resize((half, decoded.shape[1]), Image.Resampling.BILINEAR))
    assert np.abs(decoded[3, :, :half].astype(int) - src).mean() < 12


def test_colour_scale_is_fixed_and_near_is_bright() -> None:
    scale = DepthRange(0.0, 1.0, 1.0)
    lut = colorize(np.array([[0.0, 0.5, 1.0, 2.0]]), scale)[0].astype(int).sum(-1)
    assert lut[0] < lut[1] < lut[2] == lut[3]  # clipped above the range


def test_point_cloud_of_a_plane(tmp_path: Path) -> None:
    """Two views of the plane z = 2 from cameras 0.5 apart: every fused point lies on it."""
    fuser = PointCloudFuser(voxel_size=0.05)
    image = np.zeros((20, 24, 3), np.uint8)
    image[..., 0] = 200
    image[..., 2] = 17
    for i in range(2):
        fuser.add(_result(i, np.full((20, 24), 0.5), image, tx=0.5 * i))
    n = fuser.write(tmp_path / "points.ply")
    data = parse_ply(tmp_path / "points.ply")
    assert len(data) == n > 50
    assert data.dtype.names == ("x", "y", "z", "red", "green", "blue")
    np.testing.assert_allclose(data["z"], 2.0, atol=1e-5)
    assert np.all(data["red"] == 200) and np.all(data["green"] == 0) and np.all(data["blue"] == 17)
    # the union of both frusta: x from (0 - 12)·2/40 to (0.5 + 11·2/40)
    assert data["x"].min() == pytest.approx(-0.6, abs=0.05) and data["x"].max() == pytest.approx(1.05, abs=0.05)


def test_point_cloud_stays_within_max_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    fuser = PointCloudFuser(max_points=300, batch_points=500)
    for i in range(6):
        fuser.add(_result(i, rng.uniform(0.2, 1.0, (30, 40)), None, tx=0.3 * i))
        assert fuser.keys.shape[0] <= 300
    assert fuser.coarsened > 0
    xyz, rgb = fuser.points()
    assert 0 < len(xyz) <= 300 and np.isfinite(xyz).all()


# --------------------------------------------------------------------------- pipeline
class _ListSource(FrameSource):
    def __init__(self, frames: np.ndarray, name: str = "clip", fail_at: int | None = None) -> None:
        self.path, self.name, self.frames, self.fail_at = Path(name), name, frames, fail_at
        self.source_fps = self.fps = 10.0
        self.height, self.width = frames.shape[1:3]
        self.frame_count = len(frames)

    def __iter__(self):
        for i, f in enumerate(self.frames):
            if i == self.fail_at:
                raise InputError(f"{self.name}: decoding failed at frame {i}")
            yield f


def test_pipeline_writes_every_output(tmp_path: Path) -> None:
    frames = make_frames(40, 24, 32)
    info = run_source(
        FakeVideoModel().eval(),
        _ListSource(frames),
        tmp_path,
        InferenceOptions(input_size=28),
        OutputOptions(progress=False, png16=True),
    )
    folder = tmp_path / "clip"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cameras.json", "cameras.npz", "depth.mp4", "depth.npz", "depth_png16", "points.ply", "run.json"]
    assert info["frames"] == 40 and info["network_input"] == [28, 42]
    with np.load(folder / "depth.npz") as z:
        assert z["depth"].shape == (40, 24, 32)
    assert len(list((folder / "depth_png16").glob("*.png"))) == 40
    assert json.loads((folder / "run.json").read_text())["outputs"][0] == "depth.npz"
    assert len(parse_ply(folder / "points.ply")) > 0


def test_interrupted_run_leaves_no_finished_looking_files(tmp_path: Path) -> None:
    frames = make_frames(60, 24, 32)
    with pytest.raises(InputError, match="decoding failed at frame 45"):
        run_source(
            FakeVideoModel().eval(),
            _ListSource(frames, fail_at=45),
            tmp_path,
            InferenceOptions(input_size=28),
            OutputOptions(progress=False, png16=True),
        )
    assert not (tmp_path / "clip").exists()  # created by the run, emptied, removed
    # a complete earlier run stays as it was when a rerun fails
    run_source(
        FakeVideoModel().eval(),
        _ListSource(frames[:30]),
        tmp_path,
        InferenceOptions(input_size=28),
        OutputOptions(progress=False),
    )
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "clip").iterdir()}
    with pytest.raises(InputError):
        run_source(
            FakeVideoModel().eval(),
            _ListSource(frames, fail_at=45),
            tmp_path,
            InferenceOptions(input_size=28),
            OutputOptions(progress=False),
        )
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "clip").iterdir()} == before


def test_pipeline_without_cameras(tmp_path: Path) -> None:
    run_source(
        FakeVideoModel(cameras=False).eval(),
        _ListSource(make_frames(5, 24, 32)),
        tmp_path,
        InferenceOptions(input_size=28),
        OutputOptions(progress=False),
    )
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["depth.mp4", "depth.npz", "run.json"]


def test_all_zero_prediction_writes_no_point_cloud_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that predicts zero disparity everywhere (random weights): every other output is
    written, points.ply is not (an earlier run's is removed), and the log says why."""

    class ZeroDepth(FakeVideoModel):
        def forward(self, video):  # noqa: ANN001, ANN202
            out = super().forward(video)
            out.depth = out.depth * 0.0
            return out

    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "points.ply").write_bytes(b"earlier run")
    with caplog.at_level("WARNING", logger="gemdepth.inference.pointcloud"):
        info = run_source(
            ZeroDepth().eval(),
            _ListSource(make_frames(5, 24, 32)),
            tmp_path,
            InferenceOptions(input_size=28),
            OutputOptions(progress=False),
        )
    names = sorted(p.name for p in (tmp_path / "clip").iterdir())
    assert names == ["cameras.json", "cameras.npz", "depth.mp4", "depth.npz", "run.json"]
    assert "points.ply" not in info["outputs"] and info["point_cloud"]["frames_without_points"] == 5
    assert "no points.ply (removed the earlier run's): no frame gave a usable point (5 of 5 frames" in caplog.text
