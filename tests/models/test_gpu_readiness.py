"""Compile and GPU readiness of the model forward: no graph breaks, SDPA everywhere, autocast islands."""

from __future__ import annotations

import pytest
import torch

from gemdepth.models.sdpa import attention_report, format_report, sdpa_backends
from test_chunking import mini  # same folder (pytest puts it on sys.path)

PLUGINS = {"none": [], "astt": ["astt"], "gem": ["gem"], "gem+astt": ["gem", "astt"]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("host", ["dav2", "vda"])
@pytest.mark.parametrize("plugins", list(PLUGINS))
def test_forward_traces_without_graph_breaks(host: str, plugins: str) -> None:
    model = mini(host, [{"name": p} for p in PLUGINS[plugins]])
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 3, 28, 42))
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_sliced_forward_traces_without_graph_breaks() -> None:
    """The smallest budget: frame slices, attention in head groups, the head's full-size stages in
    bands of rows; still one graph."""
    model = mini("vda", [{"name": "gem"}, {"name": "astt"}])
    model.set_max_memory(1)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(torch.randn(1, 2, 3, 42, 42))
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_every_attention_goes_through_sdpa_with_contiguous_heads() -> None:
    model = mini("vda", [{"name": "gem"}, {"name": "astt"}])
    frames = 3
    calls = attention_report(model, torch.randn(1, frames, 3, 28, 42))
    by_part: dict[str, int] = {}
    for call in calls:
        part = call.module.split(".")[0] + ("." + call.module.split(".")[1] if call.module.startswith("plugins") else "")
        by_part[part] = by_part.get(part, 0) + 1
        assert call.last_dim_contiguous, call  # the fused kernels need stride 1 in the head dim
        assert call.fused == "math"  # on CPU no CUDA kernel applies (the check runs on the GPU as well)
    # encoder: 4 blocks; GEM: frame + global block + camera trunk 4 blocks × 4 iterations;
    # ASTT: 2 spatial + 2 time blocks; VDA head: 4 motion modules × 2 attention blocks
    assert by_part == {"encoder": 4, "plugins.gem": 2 + 16, "plugins.astt": 4, "head": 8}
    report = format_report(calls)
    assert "plugins.astt.time_blocks.0" in report and "head.motion_modules.3" in report


def test_sdpa_backends_is_false_on_cpu_tensors() -> None:
    q = torch.randn(1, 2, 8, 16)
    assert sdpa_backends(q, q, q) == {"flash": False, "efficient": False, "cudnn": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to ask the fused-kernel checks")
def test_fused_kernels_accept_the_attention_calls_on_cuda() -> None:  # pragma: no cover - GPU only
    model = mini("vda", [{"name": "gem"}, {"name": "astt"}]).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        calls = attention_report(model, torch.randn(1, 3, 3, 28, 42, device="cuda"))
    assert all(c.fused != "math" for c in calls), format_report(calls)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_fp32_islands_and_stays_close(dtype: torch.dtype) -> None:
    """Under CPU autocast the camera head, pose encoders and the depth output stay float32."""
    model = mini("vda", [{"name": "gem"}, {"name": "astt"}])
    video = torch.randn(1, 3, 3, 28, 42)
    with torch.no_grad():
        ref = model(video)
        with torch.autocast("cpu", dtype=dtype):
            out = model(video)
    assert out.depth.dtype == torch.float32 or out.depth.dtype == dtype
    assert all(p.dtype == torch.float32 for p in out.pose_enc)
    assert out.extrinsics.dtype == torch.float32
    err = ((out.depth.float() - ref.depth).abs().max() / ref.depth.abs().max()).item()
    assert err < (5e-2 if dtype == torch.bfloat16 else 1e-2), err
    assert torch.isfinite(out.depth).all()


def test_channels_last_head_gives_the_same_depth() -> None:
    model = mini("dav2", [])
    video = torch.randn(1, 2, 3, 56, 70)
    with torch.no_grad():
        model.head.channels_last = False
        ref = model(video).depth
        model.head.channels_last = True
        out = model(video).depth
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_attention_report_sees_the_dtype_autocast_gives_the_kernel() -> None:
    """Queries come out of a float32 LayerNorm; under autocast SDPA still receives the low-precision cast
    (except in the camera head, which runs with autocast off like the official code)."""
    model = mini("vda", [{"name": "gem"}, {"name": "astt"}])
    video = torch.randn(1, 2, 3, 28, 42)
    assert {c.dtype for c in attention_report(model, video)} == {"float32"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calls = attention_report(model, video)
    island = {c.dtype for c in calls if ".camera_head." in c.module}
    rest = {c.dtype for c in calls if ".camera_head." not in c.module}
    assert island == {"float32"} and rest == {"bfloat16"}, format_report(calls)  # the camera head is an fp32 island
