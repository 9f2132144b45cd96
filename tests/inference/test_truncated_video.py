"""A truncated video whose index is at the front (faststart mp4, mkv) decodes cleanly up to the
cut: the reader must say so (declared vs decoded frames), and ``run.json`` must record both."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
from infer_fakes import FakeVideoModel, make_frames

from gemdepth.inference import InferenceOptions, OutputOptions, open_source, run_source

FRAMES = 40


def _write(path: Path, frames: np.ndarray, fmt: str, options: dict[str, str]) -> Path:
    """H.264 at 20 fps in ``fmt`` (``movflags=faststart`` puts the mp4 index at the front)."""
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=20)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _count_decodable(path: Path) -> int:
    """Frames PyAV gets out of the file, independently of gemdepth (stops at the first error)."""
    n = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                n += 1
    except av.error.FFmpegError:
        pass
    return n


@pytest.fixture(params=[("mp4", {"movflags": "faststart"}), ("matroska", {})], ids=["faststart-mp4", "mkv"])
def video(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """A complete video and a copy cut at 70 % of its bytes."""
    fmt, options = request.param
    ext = ".mp4" if fmt == "mp4" else ".mkv"
    full = _write(tmp_path / f"full{ext}", make_frames(FRAMES, 36, 48, noise=0.0), fmt, options)
    data = full.read_bytes()
    if fmt == "mp4":
        assert data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes first
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    return full, cut


def test_complete_video_is_not_reported(video: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    full, _ = video
    src = open_source(full)
    with caplog.at_level(logging.WARNING):
        assert len(list(src)) == FRAMES
    assert src.frames_declared == FRAMES and src.frames_decoded == FRAMES and not src.truncated
    assert "could be decoded" not in caplog.text
    src = open_source(full, end=25)  # stopping early on purpose is not a truncation either
    assert len(list(src)) == 25 and not src.truncated


def test_truncated_video_warns_with_declared_and_decoded(
    video: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, cut = video
    src = open_source(cut)
    with caplog.at_level(logging.WARNING, logger="gemdepth.inference.readers"):
        got = len(list(src))
    decodable = _count_decodable(cut)
    assert 0 < got < FRAMES and got == src.frames_decoded
    assert abs(got - decodable) <= 1  # what FFmpeg itself gets out of the cut file
    assert src.frames_declared == FRAMES and src.truncated
    assert f"{cut}: the container declares {FRAMES} frames but only {got} could be decoded" in caplog.text


def test_truncated_video_is_recorded_in_run_json(
    video: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, cut = video
    with caplog.at_level(logging.WARNING, logger="gemdepth.inference.readers"):
        info = run_source(
            FakeVideoModel().eval(),
            open_source(cut),
            tmp_path / "out",
            InferenceOptions(input_size=28),
            OutputOptions(progress=False, video=False, ply=False),
        )
    run = json.loads((tmp_path / "out" / "cut" / "run.json").read_text())
    assert run == json.loads(json.dumps(info, default=str))
    assert run["source_frames_declared"] == FRAMES and run["source_truncated"] is True
    assert run["source_frames_decoded"] == run["frames"] < FRAMES
    with np.load(tmp_path / "out" / "cut" / "depth.npz") as z:
        assert z["depth"].shape[0] == run["source_frames_decoded"]
    assert any("could be decoded" in w and str(FRAMES) in w for w in run["warnings"])
    assert "could be decoded" in caplog.text


def test_complete_video_run_json(video: tuple[Path, Path], tmp_path: Path) -> None:
    full, _ = video
    info = run_source(
        FakeVideoModel().eval(),
        open_source(full, stride=2),
        tmp_path,
        InferenceOptions(input_size=28),
        OutputOptions(progress=False, video=False, ply=False),
    )
    assert info["source_frames_declared"] == info["source_frames_decoded"] == FRAMES
    assert info["frames"] == FRAMES // 2 and info["source_truncated"] is False and info["warnings"] == []


def test_infer_cli_reports_the_truncation(
    video: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemdepth
    from gemdepth.inference.cli import main

    monkeypatch.setattr(gemdepth, "load_model", lambda *a, **k: FakeVideoModel())
    _, cut = video
    code = main([str(cut), "--ckpt", "fake.safetensors", "--out", str(tmp_path / "out"), "--input-size", "28",
                 "--no-progress"])
    out = capsys.readouterr().out
    run = json.loads((tmp_path / "out" / "cut" / "run.json").read_text())
    assert code == 0  # the decoded part is a valid result; the shortfall is reported, not hidden
    decoded = run["source_frames_decoded"]
    assert f"[{decoded} of {FRAMES} declared frames decoded: truncated file]" in out


def test_mkv_with_a_longer_audio_track(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The container's duration spans the 3 s audio track; the video's own (2 s, 40 frames) counts."""
    frames = make_frames(FRAMES, 36, 48, noise=0.0)
    path = tmp_path / "talk.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=20)
        video.height, video.width, video.pix_fmt = 36, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        audio.layout = "mono"
        samples = (1000 * np.sin(np.arange(8000 * 3) / 10)).astype(np.int16)
        for start in range(0, len(samples), 800):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 800], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = 8000, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for stream in (audio, video):
            for packet in stream.encode():
                container.mux(packet)
    with av.open(str(path)) as container:
        assert container.duration == 3_000_000  # what a naive estimate would take: 60 frames
    src = open_source(path)
    with caplog.at_level(logging.WARNING):
        assert len(list(src)) == FRAMES
    assert src.frames_declared == FRAMES and not src.truncated and "could be decoded" not in caplog.text
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    src = open_source(cut)
    got = len(list(src))
    assert got < FRAMES and src.truncated and src.frames_declared == FRAMES
