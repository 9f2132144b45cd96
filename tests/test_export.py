"""``gemdepth export``: ONNX and torch.export programs of the mini models of all three families.

Every exported graph is compared with the eager model at sizes other than the example it was
traced with (H and W are dynamic), with ONNX Runtime on CPU for ONNX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gemdepth.cli import main as gemdepth_main
from gemdepth.export import OnnxWindowModel, export_onnx, traceable_pos_embed
from gemdepth.inference import infer_video
from gemdepth.models import build_model
from gemdepth.models.encoder import interpolate_pos_embed
from gemdepth.weights.convert import save_checkpoint

onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (onnx, onnxruntime, onnxscript)")
pytest.importorskip("onnxruntime", reason="needs the 'export' extra")
pytest.importorskip("onnxscript", reason="needs the 'export' extra")

CONFIGS = Path(__file__).resolve().parent / "configs"
FRAMES = 5


def _mini(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(yaml.safe_load((CONFIGS / f"official_mini_{family}.yaml").read_text())).eval()
    with torch.no_grad():
        model.head.scratch.output_conv2[2].bias.fill_(1.0)  # positive depth: relative errors mean something
        for mm in getattr(model.head, "motion_modules", []):  # identity at init: give them weight so T matters
            torch.nn.init.normal_(mm.temporal_transformer.proj_out.weight, std=0.2)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    ok = torch.isfinite(b)
    assert torch.equal(ok, torch.isfinite(a))
    return float((a[ok] - b[ok]).abs().max() / b[ok].abs().max())


@pytest.fixture(scope="module", params=["dav2", "vda", "gemdepth"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    model = _mini(family)
    path = tmp_path_factory.mktemp(family) / f"{family}.onnx"
    report = export_onnx(model, path, frames=FRAMES, height=70, width=98)
    return family, model, path, report


def test_onnx_runtime_matches_eager_at_other_sizes(exported) -> None:
    family, model, path, report = exported
    assert report.outputs == (["depth", "pose_enc", "extrinsics", "intrinsics"] if family == "gemdepth" else ["depth"])
    assert len(report.differences) == 2 and report.worst_relative() <= 1e-4  # checked on the spot, two sizes
    runner = OnnxWindowModel(path)
    assert runner.max_frames == FRAMES and runner.output_names == report.outputs
    for h, w in ((42, 140), (112, 56)):  # neither the example nor the on-the-spot sizes
        video = torch.randn(1, FRAMES, 3, h, w, generator=torch.Generator().manual_seed(h))
        got = runner.run(video)
        with torch.no_grad():
            ref = model(video)
        assert got[0].shape == (1, FRAMES, h, w)
        assert _rel(got[0], ref.depth) <= 1e-4, (family, h, w)
        if family == "gemdepth":
            assert _rel(got[1], ref.pose_enc[-1]) <= 1e-4
            assert _rel(got[2], ref.extrinsics) <= 1e-4
            assert _rel(got[3], ref.intrinsics) <= 1e-4


def test_onnx_graph_is_opset_18_with_dynamic_height_and_width(exported) -> None:
    _, _, path, _ = exported
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:3]] == [1, FRAMES, 3]
    assert dims[3].dim_param and dims[4].dim_param  # symbolic H and W
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gemdepth_frames"] == str(FRAMES) and meta["gemdepth_config"]


def test_onnx_model_runs_through_the_windowing(exported) -> None:
    family, model, path, _ = exported
    frames = np.random.default_rng(0).integers(0, 255, (9, 40, 60, 3), dtype=np.uint8)
    settings = {"input_size": 28, "window": FRAMES, "overlap": 3, "interp": 2}
    eager = list(infer_video(model, frames, **settings))
    runner = OnnxWindowModel(path)  # a plain callable: the windowing takes any window → depth function
    got = list(infer_video(runner, frames, device="cpu", **settings))
    depth, ref = np.stack([r.depth for r in got]), np.stack([r.depth for r in eager])
    assert depth.shape == ref.shape == (9, 40, 60)
    np.testing.assert_allclose(depth, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    if family == "gemdepth":  # cameras through the windowing too (chained by similarity)
        for name in ("extrinsics", "intrinsics"):
            a = np.stack([getattr(r, name) for r in got])
            b = np.stack([getattr(r, name) for r in eager])
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b[np.isfinite(b)]).max())


def test_traceable_pos_embed_equals_dinov2_resampling() -> None:
    table = torch.randn(1, 37 * 37 + 1, 32, generator=torch.Generator().manual_seed(0))
    for grid in ((5, 7), (37, 37), (37, 20), (2, 2), (40, 61)):
        ref = interpolate_pos_embed(table, *grid)
        got = traceable_pos_embed(table, *grid)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max() / ref.abs().max()) <= 2e-5, grid


def test_export_cli_exported_program_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _mini("vda", seed=1)
    ckpt = save_checkpoint(model, model.config, tmp_path / "mini.safetensors")
    out = tmp_path / "mini.pt2"
    argv = ["export", str(out), "--ckpt", str(ckpt), "--format", "exported-program", "--frames", "2",
            "--height", "56", "--width", "70"]
    assert gemdepth_main(argv) == 0
    printed = capsys.readouterr().out
    assert "check at 56x70: depth max|Δ|" in printed and "check at 84x" in printed
    program = torch.export.load(out).module()
    video = torch.randn(1, 2, 3, 98, 42)
    with torch.no_grad():
        assert _rel(program(video)[0], model(video).depth) <= 1e-5
    assert gemdepth_main(["export", str(tmp_path / "x.onnx"), "--ckpt", str(ckpt), "--height", "50"]) == 2
    assert "multiple of 14" in capsys.readouterr().err
    assert gemdepth_main(["export", str(tmp_path / "x.onnx")]) == 2
