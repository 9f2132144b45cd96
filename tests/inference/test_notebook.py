"""The quickstart notebook runs top to bottom on tiny inputs (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key, value in {
        "GEMDEPTH_NB_FRAMES": "30",
        "GEMDEPTH_NB_SIZE": "42x56",
        "GEMDEPTH_NB_INPUT_SIZE": "28",
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GEMDEPTH_NB_CKPT", raising=False)
    monkeypatch.delenv("GEMDEPTH_NB_MODEL", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend embeds the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "windows; alignment (scale, shift)" in text
    assert "fused point cloud:" in text and "trajectory RMSE" in text
    figures = sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    )
    assert figures == 3  # depth strips, temporal profile, point cloud + cameras
