"""``gemdepth app`` driven through ``gradio_client`` against a server started here on 127.0.0.1
with a mini model: a rendered video in, depth / cameras / point cloud out (checked against
``gemdepth infer`` on the same video and against the files themselves), a zip of frames,
bad uploads answered with a message, ``--results`` without a model, session clean-up."""

from __future__ import annotations

import json
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio", reason='the app tests need Gradio (pip install "gemdepth[app]")')
gradio_client = pytest.importorskip("gradio_client", reason="the app tests need gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from glb_reader import read_glb  # noqa: E402
from PIL import Image  # noqa: E402

from gemdepth.app.inputs import AppLimits  # noqa: E402
from gemdepth.app.models import MINI_CONFIG, UNTRAINED_MINI, checkpoint_choice, choices_from_args  # noqa: E402
from gemdepth.app.results import read_ply  # noqa: E402
from gemdepth.app.ui import AppSettings, GemDepthApp  # noqa: E402
from gemdepth.inference.writers import DepthRange, colorize  # noqa: E402

SIZE = 56
FRAMES = 8
MAX_FRAMES = 12
RUN_SETTINGS = dict(input_size=SIZE, precision="fp32", window=32, overlap=10, interp=8, stride=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _render_video(path: Path, frames: int, seed: int = 3) -> Path:
    from gemdepth.data.synthetic import SynthConfig, render_sequence
    from gemdepth.demo import write_video

    seq = render_sequence(seed, SynthConfig(height=SIZE, width=SIZE, frames=frames, kind="room"))
    write_video(seq["rgb"], path, fps=10)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def mini_ckpt(workdir: Path) -> Path:
    from gemdepth.models import build_model
    from gemdepth.weights.convert import save_checkpoint

    torch.manual_seed(0)
    path = workdir / "mini.safetensors"
    save_checkpoint(build_model(MINI_CONFIG).eval(), MINI_CONFIG, path)
    return path


@pytest.fixture(scope="module")
def video(workdir: Path) -> Path:
    return _render_video(workdir / "room.mp4", FRAMES)


@pytest.fixture(scope="module")
def infer_out(workdir: Path, video: Path, mini_ckpt: Path) -> Path:
    """``gemdepth infer`` on the same video with the same checkpoint and settings as the app runs."""
    from gemdepth.inference.cli import main as infer_main

    out = workdir / "infer_out"
    assert infer_main([str(video), "--ckpt", str(mini_ckpt), "--out", str(out), "--input-size", str(SIZE),
                       "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def server(workdir: Path, mini_ckpt: Path) -> Iterator[tuple[GemDepthApp, Client]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = AppSettings(
        choices=[checkpoint_choice(mini_ckpt), *choices_from_args([], None)],
        device="cpu",
        limits=AppLimits(max_frames=MAX_FRAMES, max_resolution=None),
        root=workdir / "approot",
        sample_size=(SIZE, SIZE),
        sample_frames=FRAMES,
    )
    app = GemDepthApp(settings)
    demo = app.build()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield app, Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(workdir / "downloads"))
    finally:
        demo.close()
        torch.set_num_threads(threads)


def _run(client: Client, upload: Path | None, model: str, sample: str | None = None, **overrides: object) -> tuple:
    s = {**RUN_SETTINGS, **overrides}
    return client.predict(
        handle_file(str(upload)) if upload is not None else None,
        sample,
        model,
        s["input_size"],
        s["precision"],
        s["window"],
        s["overlap"],
        s["interp"],
        s["stride"],
        api_name="/run",
    )


def _by_name(files: list[str]) -> dict[str, Path]:
    return {Path(f).name: Path(f) for f in files}


def test_uploaded_video_gives_depth_cameras_and_point_cloud(server, video: Path, infer_out: Path) -> None:
    app, client = server
    summary, depth_video, slider, frame_png, plot, glb, files, *_ = _run(client, video, "mini.safetensors")
    got = _by_name(files)
    assert {"depth.npz", "depth.mp4", "cameras.json", "cameras.npz", "points.ply", "run.json", "points.glb"} <= set(got)
    assert f"{FRAMES} frames" in summary and "room" in summary
    assert slider["maximum"] == FRAMES - 1

    # the same video through `gemdepth infer` with the same checkpoint and settings: the same depth
    out = infer_out
    with np.load(got["depth.npz"]) as app_z, np.load(out / "room" / "depth.npz") as cli_z:
        assert app_z["depth"].shape == (FRAMES, SIZE, SIZE)
        np.testing.assert_allclose(app_z["depth"].astype(np.float32), cli_z["depth"].astype(np.float32), rtol=2e-3,
                                   atol=1e-6)
    cli_cams = json.loads((out / "room" / "cameras.json").read_text())
    app_cams = json.loads(got["cameras.json"].read_text())
    assert len(app_cams["frames"]) == FRAMES
    np.testing.assert_allclose([f["extrinsics"] for f in app_cams["frames"]],
                               [f["extrinsics"] for f in cli_cams["frames"]], atol=1e-4)

    # the 3D viewer's GLB: the points of points.ply in glTF axes, sRGB colours made linear,
    # and the camera centres (-Rᵀt) as the path
    gltf, arrays = read_glb(Path(glb))
    xyz, rgb = read_ply(got["points.ply"])
    points, path = gltf["meshes"][0]["primitives"][:2]
    assert points["mode"] == 0 and path["mode"] == 3
    np.testing.assert_array_equal(arrays[points["attributes"]["POSITION"]], xyz * np.array([1, -1, -1], np.float32))
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(arrays[points["attributes"]["COLOR_0"]], linear, atol=1e-6)
    extr = np.array([f["extrinsics"] for f in app_cams["frames"]])
    centres = np.stack([-e[:3, :3].T @ e[:3, 3] for e in extr])
    np.testing.assert_allclose(arrays[path["attributes"]["POSITION"]], centres * [1, -1, -1], atol=1e-5)
    assert plot["type"] == "matplotlib"

    # the depth video holds source | depth, one frame per input frame
    import av

    with av.open(depth_video) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape[:2] == (SIZE, 2 * SIZE)

    # the per-frame view: frame 5's colours on the depth video's scale, then the colour bar
    frame5 = np.asarray(Image.open(client.predict(5, api_name="/frame")).convert("RGB"))
    with np.load(got["depth.npz"]) as z:
        low, high = z["range"]
        expected = colorize(z["depth"][5].astype(np.float32), DepthRange(low, high, high))
    zoom = frame5.shape[0] // SIZE
    assert zoom >= 1 and frame5.shape[1] > SIZE * zoom  # the bar is to the right
    np.testing.assert_array_equal(frame5[: SIZE * zoom : zoom, : SIZE * zoom : zoom], expected)


def test_zip_of_frames(server, workdir: Path) -> None:
    _, client = server
    frames = [np.full((SIZE, SIZE + 14, 3), 20 * i, np.uint8) for i in range(6)]
    archive = workdir / "shots.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, frame in enumerate(frames):  # natural order: f2 before f10; a readme and a hidden file ignored
            from io import BytesIO

            buf = BytesIO()
            Image.fromarray(frame).save(buf, "PNG")
            zf.writestr(f"clip/f{[1, 2, 3, 10, 11, 20][i]}.png", buf.getvalue())
        zf.writestr("clip/readme.txt", "not a frame")
        zf.writestr("__MACOSX/clip/._f1.png", "resource fork")
    summary, *_, files = _run(client, archive, UNTRAINED_MINI)[:7]
    with np.load(_by_name(files)["depth.npz"]) as z:
        assert z["depth"].shape == (6, SIZE, SIZE + 14)
    assert "6 frames" in summary


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "notes.txt: not a video or a zip of frames"),
        ("broken.mp4", b"this is not a video", "broken.mp4: cannot be opened as a video"),
        ("empty.zip", None, "empty.zip: the zip holds no images"),
    ],
)
def test_bad_upload_gets_a_message(server, workdir: Path, name: str, content: bytes | None, message: str) -> None:
    app, client = server
    path = workdir / name
    if content is None:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.txt", "x")
    else:
        path.write_bytes(content)
    session = app.root / "sessions" / client.session_hash
    runs_before = sorted(session.glob("run-*"))
    with pytest.raises(AppError) as err:
        _run(client, path, UNTRAINED_MINI)
    assert sorted(session.glob("run-*")) == runs_before  # the failed run left nothing; the shown one is kept
    text = str(err.value)
    assert message in text
    assert "Traceback" not in text and str(app.root) not in text and "/gradio/" not in text


def test_too_long_video_and_bad_settings(server, workdir: Path) -> None:
    _, client = server
    long_video = _render_video(workdir / "long.mp4", MAX_FRAMES + 4)
    with pytest.raises(AppError, match=f"16 frames at stride 1, more than this app's limit of {MAX_FRAMES}; "
                                       f"use a frame stride of at least 2"):
        _run(client, long_video, UNTRAINED_MINI)
    summary = _run(client, long_video, UNTRAINED_MINI, stride=2)[0]  # the suggested fix works
    assert "8 frames" in summary
    with pytest.raises(AppError, match="overlap"):
        _run(client, long_video, UNTRAINED_MINI, window=8, overlap=8)
    with pytest.raises(AppError, match="multiple of 14"):
        _run(client, long_video, UNTRAINED_MINI, input_size=50)
    with pytest.raises(AppError, match="'fp16'.* not in the list of choices"):  # the CPU page offers no fp16
        _run(client, long_video, UNTRAINED_MINI, precision="fp16")


def test_rendered_sample_runs(server) -> None:
    app, client = server
    sample = next(iter(app.samples))
    summary = _run(client, None, UNTRAINED_MINI, sample=sample)[0]
    assert f"{FRAMES} frames" in summary and "untrained mini GemDepth (random weights" in summary


def test_results_mode_without_model(workdir: Path, infer_out: Path) -> None:
    """`gemdepth app --results OUT/`: an app with no model shows existing infer outputs."""
    from gemdepth.app.results import find_results

    out = infer_out

    app = GemDepthApp(AppSettings(results=find_results(out), device="cpu", root=workdir / "results_root"))
    assert app.bank is None
    demo = app.build()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(workdir / "downloads"))
        assert "/run" not in client.view_api(return_format="dict")["named_endpoints"]
        summary, depth_video, slider, _, _, glb, files, *_ = client.predict(next(iter(app.results)),
                                                                            api_name="/open_result")
        assert "room" in summary and slider["maximum"] == FRAMES - 1 and Path(depth_video).name == "depth.mp4"
        assert {"depth.npz", "cameras.json", "points.ply"} <= set(_by_name(files))
        gltf, arrays = read_glb(Path(glb))
        assert arrays[0].shape == read_ply(out / "room" / "points.ply")[0].shape
    finally:
        demo.close()
        app.close()


def test_session_folders_are_removed(server) -> None:
    app, client = server
    sessions = app.root / "sessions"
    folder = sessions / client.session_hash
    if not folder.exists():  # this client has not run yet
        _run(client, None, UNTRAINED_MINI, sample=next(iter(app.samples)))
    assert folder.is_dir() and any(folder.iterdir())
    app.on_unload(SimpleNamespace(session_hash=client.session_hash))  # what the tab's unload calls
    assert not folder.exists()
    other = sessions / "other"
    other.mkdir()
    app.remove_session(str(other))  # the State's delete_callback
    assert not other.exists()
    outside = app.root / "keep"
    outside.mkdir()
    app.remove_session(str(outside))  # nothing outside the sessions folder is deleted
    assert outside.exists()
