"""A real browser: headless system Chromium loads the app, runs the rendered sample, and the
page shows the depth video (decoded, playing) and the 3D viewer (its canvas drew the points);
an upload that is not a video shows our message and no trace; closing the tab removes the
session's folder; ``--results`` shows existing outputs without a model. The check itself lives in
``benchmarks/browser_check.py``; skipped where Chromium or Playwright is missing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "browser_check.py"


def _load_check():
    spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    check = _load_check()
    why = check.missing_requirement()
    if why:
        pytest.skip(f"browser check: {why}")
    shot = Path(os.environ.get("GEMDEPTH_SCREENSHOT", tmp_path / "app.png"))
    found = check.run_check(shot, tmp_path / "bad_upload.png")
    assert found["video_ready_state"] >= 2, found  # the depth video decoded in the browser
    assert found["video_size"] == [224, 112], found  # source | depth, 112×112 each
    assert found["canvas_non_background_pixels"] > 200, found  # the 3D viewer drew the cloud
    assert found["frame_image"], found
    assert "cannot be opened as a video" in found["bad_upload_message"], found
    assert not found["bad_upload_shows_traceback"], found
    assert found["session_folders_while_open"] >= 1 and found["session_folders_after_close"] == 0, found
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_results_page_in_headless_chromium(tmp_path: Path) -> None:
    """`--results` with no model: the renderer's ground truth as an infer folder; the 3D viewer
    draws its room (tens of thousands of pixels), and the page has no Run button."""
    check = _load_check()
    why = check.missing_requirement()
    if why:
        pytest.skip(f"browser check: {why}")
    found = check.results_check(tmp_path / "results.png")
    assert not found["results_has_run_button"], found
    assert found["results_canvas_non_background_pixels"] > 2000, found
