"""Load ``gemdepth app`` in a real headless Chromium, run the rendered sample, take a screenshot.

Starts the app on 127.0.0.1 (a free port) with the untrained mini model and a small sample,
opens the page with Playwright driving the system's Chromium (``/usr/bin/chromium``, Debian's
``chromium`` package; Playwright downloads no browser here), clicks *Run*, waits until the
depth video and the 3D viewer's canvas are on the page, and saves a full-page screenshot.
It also checks the page shows an error message (and no trace) for an upload that is not a
video. Prints what it found as JSON; exit code 0 when everything was there.

    python benchmarks/browser_check.py --out outputs/browser.png

Needs ``pip install playwright`` (no ``playwright install``: the system Chromium is used).
``tests/app/test_browser.py`` runs the same check, skipped where Chromium or Playwright is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL (the 3D viewer) on the CPU: Chromium only falls back to SwiftShader when asked to
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def find_chromium() -> str | None:
    """The system Chromium's path (``GEMDEPTH_CHROMIUM`` overrides), or None."""
    env = os.environ.get("GEMDEPTH_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def missing_requirement() -> str | None:
    """Why the check cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return 'gradio is not installed (pip install "gemdepth[app]")'
    if find_chromium() is None:
        return "no system Chromium (apt-get install chromium, or set GEMDEPTH_CHROMIUM)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_check(
    screenshot: Path,
    bad_upload_screenshot: Path | None = None,
    timeout_s: float = 240.0,
    sample_size: tuple[int, int] = (112, 112),
    sample_frames: int = 24,
) -> dict[str, Any]:
    """Start the app, drive the page in Chromium, save the screenshot(s); returns the findings."""
    from playwright.sync_api import sync_playwright

    from gemdepth.app.models import choices_from_args
    from gemdepth.app.ui import AppSettings, GemDepthApp

    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    app = GemDepthApp(AppSettings(choices=choices_from_args([], None), device="cpu",
                                  sample_size=sample_size, sample_frames=sample_frames))
    demo = app.build()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    found: dict[str, Any] = {"url": f"http://127.0.0.1:{port}/", "screenshot": str(screenshot)}
    profile = Path(tempfile.mkdtemp(prefix="gemdepth-chromium-"))
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 2000},
            )
            page = context.pages[0] if context.pages else context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            start = time.perf_counter()
            page.goto(found["url"], wait_until="domcontentloaded", timeout=timeout_s * 1000)
            page.get_by_role("button", name="Run").click(timeout=timeout_s * 1000)
            page.locator("video[src]").first.wait_for(state="attached", timeout=timeout_s * 1000)
            page.locator("[data-testid='model3d'] canvas").first.wait_for(state="visible", timeout=timeout_s * 1000)
            found["seconds_to_results"] = round(time.perf_counter() - start, 1)
            canvas = page.locator("[data-testid='model3d'] canvas").first
            page.wait_for_timeout(2000)  # the video starts playing
            for _ in range(30):  # Babylon loads the GLB and draws: wait for the points (≤ 30 s)
                # the page as it is (the viewport holds it all: a full-page capture would resize
                # the WebGL canvas); measured on the very image that is saved
                png = page.screenshot()
                found["canvas_non_background_pixels"] = _coverage(png, canvas.bounding_box())
                if found["canvas_non_background_pixels"] > 200:
                    break
                page.wait_for_timeout(1000)
            screenshot.write_bytes(png)
            video = page.locator("video[src]").first
            found["video_ready_state"] = video.evaluate("v => v.readyState")
            found["video_size"] = video.evaluate("v => [v.videoWidth, v.videoHeight]")
            found["canvas_size"] = canvas.evaluate("c => [c.width, c.height]")
            found["frame_image"] = page.locator("img[src*='image']").count() > 0
            found["summary"] = page.get_by_text("frames,").first.inner_text()[:200]
            if bad_upload_screenshot is not None:
                found.update(_bad_upload(page, Path(bad_upload_screenshot), profile, timeout_s))
            found["console_errors"] = [c for c in console if c.startswith("error")][:10]
            sessions = app.root / "sessions"
            found["session_folders_while_open"] = len(list(sessions.iterdir()))
            page.close()  # the tab closes: demo.unload removes its folder
            for _ in range(20):
                time.sleep(0.5)
                if not any(sessions.iterdir()):
                    break
            found["session_folders_after_close"] = len(list(sessions.iterdir()))
            context.close()
    finally:
        demo.close()
        app.close()
        shutil.rmtree(profile, ignore_errors=True)
    found["ok"] = bool(
        found.get("video_ready_state", 0) >= 2
        and found.get("canvas_non_background_pixels", 0) > 200
        and found.get("session_folders_while_open", 0) >= 1
        and found.get("session_folders_after_close", 1) == 0
        and (bad_upload_screenshot is None or found.get("bad_upload_message"))
    )
    return found


def ground_truth_results(root: Path, size: tuple[int, int] = (168, 224), frames: int = 48, seed: int = 11) -> Path:
    """A ``gemdepth infer``-style output folder made from the synthetic renderer's ground truth
    (disparity = 1 / depth, the true cameras), written by the inference writers: what the
    viewers show for a perfect model, so the 3D view has a recognisable scene."""
    import numpy as np

    from gemdepth.data.synthetic import SynthConfig, render_sequence
    from gemdepth.inference.pointcloud import PointCloudFuser
    from gemdepth.inference.windowing import FrameResult
    from gemdepth.inference.writers import CamerasWriter, DepthNpzWriter, DepthRange, DepthVideoWriter

    seq = render_sequence(seed, SynthConfig(height=size[0], width=size[1], frames=frames, kind="room"))
    depth = seq["depth"]
    disparity = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0.0).astype(np.float32)
    results = [FrameResult(i, disparity[i], seq["rgb"][i], seq["extrinsics"][i], seq["intrinsics"][i])
               for i in range(frames)]
    folder = root / "synthetic_ground_truth"
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    scale = DepthRange.from_depths([r.depth for r in results[:8]])
    npz = DepthNpzWriter(folder / "depth.npz", h, w, 12.0)
    npz.extra["range"] = np.array([scale.low, scale.high])
    writers = [npz, DepthVideoWriter(folder / "depth.mp4", h, w, 12.0, scale), CamerasWriter(folder, h, w, 12.0, False)]
    fuser = PointCloudFuser()
    for r in results:
        for writer in writers:
            writer.add(r, r.index)
        fuser.add(r)
    for writer in writers:
        writer.commit()
    fuser.write(folder / "points.ply")
    return folder


def results_check(screenshot: Path, timeout_s: float = 240.0) -> dict[str, Any]:
    """``gemdepth app --results``: no model; the renderer's ground truth opened in Chromium."""
    from playwright.sync_api import sync_playwright

    from gemdepth.app.ui import AppSettings, GemDepthApp

    work = Path(tempfile.mkdtemp(prefix="gemdepth-gt-"))
    found: dict[str, Any] = {"results_screenshot": str(screenshot)}
    try:
        app = GemDepthApp(AppSettings(results=[ground_truth_results(work)], device="cpu"))
        demo = app.build()
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(work / "profile"), executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS,
                    viewport={"width": 1400, "height": 1600},
                )
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=timeout_s * 1000)
                found["results_has_run_button"] = page.get_by_role("button", name="Run").count() > 0
                page.locator("video[src]").first.wait_for(state="attached", timeout=timeout_s * 1000)
                canvas = page.locator("[data-testid='model3d'] canvas").first
                canvas.wait_for(state="visible", timeout=timeout_s * 1000)
                page.wait_for_timeout(2000)
                for _ in range(30):
                    png = page.screenshot()
                    found["results_canvas_non_background_pixels"] = _coverage(png, canvas.bounding_box())
                    if found["results_canvas_non_background_pixels"] > 2000:
                        break
                    page.wait_for_timeout(1000)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(png)
                context.close()
        finally:
            demo.close()
            app.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return found


def _coverage(png: bytes, box: dict[str, float] | None) -> int:
    """Pixels inside ``box`` (the 3D viewer's canvas, less its top strip where Gradio overlays
    the label and buttons) of a page screenshot that differ from the canvas's background colour."""
    import io

    import numpy as np
    from PIL import Image

    if box is None:
        return 0
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    x0, y0 = int(box["x"]) + 2, int(box["y"]) + 40  # below the label and the buttons drawn over the canvas
    crop = image[y0 : int(box["y"] + box["height"]) - 2, x0 : int(box["x"] + box["width"]) - 2]
    if crop.size == 0:
        return 0
    background = np.median(crop.reshape(-1, 3), axis=0)
    return int((np.abs(crop - background).sum(-1) > 40).sum())


def _bad_upload(page: Any, shot: Path, folder: Path, timeout_s: float) -> dict[str, Any]:
    """Upload a text file named like a video; the page must show our message, no trace."""
    bad = folder / "not_a_video.mp4"
    bad.write_text("this is not a video\n")
    page.locator("input[type='file']").first.set_input_files(str(bad))
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Run").click()
    toast = page.get_by_text("cannot be opened as a video").first
    toast.wait_for(state="visible", timeout=timeout_s * 1000)
    page.wait_for_timeout(1000)  # the toast's fade-in
    body = page.locator("body").inner_text()
    page.screenshot(path=str(shot), full_page=False)
    return {"bad_upload_message": toast.inner_text()[:300], "bad_upload_shows_traceback": "Traceback" in body,
            "bad_upload_screenshot": str(shot)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/browser_check.png"), help="screenshot path")
    parser.add_argument("--bad-upload-out", type=Path, default=None,
                        help="also upload a non-video and screenshot the message here")
    parser.add_argument("--results-out", type=Path, default=None,
                        help="also open the renderer's ground truth with --results and screenshot it here")
    parser.add_argument("--sample-size", type=int, nargs=2, default=[112, 112], metavar=("H", "W"))
    parser.add_argument("--sample-frames", type=int, default=24)
    args = parser.parse_args(argv)
    why = missing_requirement()
    if why:
        print(f"browser check skipped: {why}")
        return 0
    found = run_check(args.out, args.bad_upload_out, sample_size=tuple(args.sample_size),
                      sample_frames=args.sample_frames)
    if args.results_out is not None:
        found.update(results_check(args.results_out))
        found["ok"] = found["ok"] and found["results_canvas_non_background_pixels"] > 2000 \
            and not found["results_has_run_button"]
    print(json.dumps(found, indent=1))
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
