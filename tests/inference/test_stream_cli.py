"""``gemdepth infer --online`` end to end: a small mp4, a frame folder, an http:// stream, and clear
errors for an unreachable URL or a missing camera device."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from infer_fakes import make_frames, write_folder, write_video

from gemdepth.inference.cli import main
from gemdepth.inference.online_sources import is_live


def _latency(folder: Path, frames: int) -> None:
    lines = (folder / "latency.csv").read_text().splitlines()
    assert lines[0] == "frame,source_frame,latency_ms" and len(lines) == frames + 1
    values = [float(line.split(",")[2]) for line in lines[1:]]
    assert all(v > 0 for v in values)
    run = json.loads((folder / "run.json").read_text())
    assert run["online"]["frames"] == frames and run["online"]["latency_log"] == "latency.csv"
    assert run["online"]["latency_ms_max"] >= run["online"]["latency_ms_median"] > 0


def test_online_video_and_folder(tmp_path: Path, mini_checkpoint: Path) -> None:
    frames = make_frames(12, 36, 48, noise=0.0)
    video = write_video(tmp_path / "walk.mp4", frames, "libx264", "yuv420p", fps=20)
    folder = write_folder(tmp_path / "shots", frames[:5])
    out = tmp_path / "out"
    code = main([str(video), str(folder), "--ckpt", str(mini_checkpoint), "--out", str(out), "--input-size", "28",
                 "--online", "--online-window", "4", "--no-progress"])
    assert code == 0
    walk, shots = out / "walk", out / "shots"
    assert {"depth.npz", "depth.mp4", "cameras.npz", "cameras.json", "points.ply", "run.json", "latency.csv"} <= {
        p.name for p in walk.iterdir()
    }
    with np.load(walk / "depth.npz") as z:
        assert z["depth"].shape == (12, 36, 48) and np.isfinite(z["depth"]).all() and z["depth"].min() >= 0
    with np.load(walk / "cameras.npz") as c:
        assert c["extrinsics"].shape == (12, 4, 4)
    _latency(walk, 12)
    _latency(shots, 5)
    assert json.loads((walk / "run.json").read_text())["online"]["window"] == 4
    # the folder's depth.npz is what gemdepth.stream gives for the same (lossless) frames
    import gemdepth

    model = gemdepth.load_model(mini_checkpoint).eval()
    expected = np.stack([r.depth for r in gemdepth.stream(model, input_size=28, window=4).run(list(frames[:5]))])
    with np.load(shots / "depth.npz") as z:
        np.testing.assert_allclose(z["depth"].astype(np.float32), expected, rtol=1e-3,
                                   atol=1e-3 * float(np.abs(expected).max()))


@pytest.fixture()
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder (a network stream without the network)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_online_http_stream(http_folder: tuple[str, Path], tmp_path: Path, mini_checkpoint: Path) -> None:
    base, root = http_folder
    write_video(root / "cam.mp4", make_frames(6, 28, 28, noise=0.0), "libx264", "yuv420p", fps=10)
    out = tmp_path / "out"
    url = f"{base}/cam.mp4"
    assert is_live(url)
    code = main([url, "--ckpt", str(mini_checkpoint), "--out", str(out), "--input-size", "28", "--online",
                 "--no-progress", "--no-ply"])
    assert code == 0
    (folder,) = list(out.iterdir())
    with np.load(folder / "depth.npz") as z:
        assert z["depth"].shape == (6, 28, 28)
    _latency(folder, 6)
    assert json.loads((folder / "run.json").read_text())["input"] == url


def test_unreachable_url_and_missing_camera(tmp_path: Path, mini_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/live"
    code = main([url, "--ckpt", str(mini_checkpoint), "--out", str(tmp_path / "o"), "--online", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and url in err and "cannot open the stream" in err and "reachable" in err
    device = "/dev/video97"
    code = main([device, "--ckpt", str(mini_checkpoint), "--out", str(tmp_path / "o"), "--online", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "/dev/video97: no such camera device" in err and "ls /dev/video*" in err


def test_bad_online_window_is_a_usage_error(tmp_path: Path, mini_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["x.mp4", "--ckpt", str(mini_checkpoint), "--out", str(tmp_path), "--online", "--online-window", "1"])
    assert code == 2 and "--online-window must be at least 2" in capsys.readouterr().err
