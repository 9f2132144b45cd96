"""CPU float32 inference of linear layers through oneDNN: same numbers, taken only where it may be."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

import gemdepth.models.cpu_linear as cpu_linear
from gemdepth.models import build_model
from gemdepth.models.cpu_linear import CpuLinear, CpuMlp, linear, set_cpu_linear_backend, use_cpu_linear

ONEDNN_OP = "mkldnn::_linear_pointwise"
needs_onednn = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="this PyTorch build has no oneDNN linear op",
)


@pytest.fixture
def backend() -> Iterator[Callable[[str | None], None]]:
    """Set the process-wide backend for one test and restore the default afterwards."""
    yield set_cpu_linear_backend
    set_cpu_linear_backend(None)


def ops_called(fn: Callable[[], object]) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 48), (3, 70, 48), (2, 4, 33, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_f_linear(backend, shape, with_bias) -> None:
    backend("onednn")
    torch.manual_seed(0)
    layer = nn.Linear(48, 96, bias=with_bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = F.linear(x, layer.weight, layer.bias)
        got = linear(x, layer.weight, layer.bias)
        strided = linear(x.transpose(0, -2).contiguous().transpose(0, -2), layer.weight[:64], None)
        assert ONEDNN_OP in ops_called(lambda: linear(x, layer.weight, layer.bias))
    assert got.shape == expected.shape
    assert rel(got, expected) < 1e-6
    assert rel(strided, F.linear(x, layer.weight[:64])) < 1e-6  # non-contiguous input, a row slice of a weight


@needs_onednn
def test_standard_op_wherever_onednn_would_change_behaviour(backend) -> None:
    backend("onednn")
    torch.manual_seed(0)
    layer = use_cpu_linear(nn.Sequential(nn.Linear(16, 8)))[0]
    x = torch.randn(4, 16)
    # autograd: the oneDNN op has no backward, so training takes F.linear and gradients flow
    assert ONEDNN_OP not in ops_called(lambda: layer(x).sum().backward())
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        assert ONEDNN_OP in ops_called(lambda: layer(x))  # no_grad counts as inference too
        double = use_cpu_linear(nn.Sequential(nn.Linear(16, 8))).double()[0]
        assert ONEDNN_OP not in ops_called(lambda: double(x.double()))  # float32 only
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its own casts
            out = layer(x)
            assert ONEDNN_OP not in ops_called(lambda: layer(x))
        assert out.dtype == torch.bfloat16
    backend("native")
    with torch.no_grad():
        assert ONEDNN_OP not in ops_called(lambda: layer(x))


@needs_onednn
def test_compiled_graph_keeps_the_standard_linear(backend) -> None:
    """Dynamo captures ``F.linear`` (Inductor lowers it itself), with no graph break for the choice."""
    backend("onednn")
    layer = use_cpu_linear(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)))
    with torch.no_grad():
        explained = torch._dynamo.explain(layer)(torch.randn(3, 16))
    assert explained.graph_break_count == 0
    targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert not any("mkldnn" in t for t in targets)
    assert any("linear" in t for t in targets)


def test_use_cpu_linear_changes_only_plain_linears() -> None:
    class OwnLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), OwnLinear(4, 4), nn.Conv2d(1, 1, 1))
    keys = list(model.state_dict())
    first = model[0]
    use_cpu_linear(model)
    assert model[0] is first and type(model[0]) is CpuLinear and isinstance(model[0], nn.Linear)
    assert type(model[1]) is OwnLinear and type(model[2]) is nn.Conv2d
    assert list(model.state_dict()) == keys  # checkpoints load as before


def test_every_linear_of_a_built_model_is_a_cpu_linear() -> None:
    model = build_model({"host": "vda", "encoder": {"embed_dim": 32, "depth": 4, "num_heads": 2,
                                                    "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]},
                         "head": {"features": 32, "out_channels": [32, 32, 64, 64], "num_frames": 4},
                         "plugins": [{"name": "gem"}, {"name": "astt"}]})
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CpuLinear for m in linears)
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]  # encoder, GEM and ASTT blocks
    assert len(mlps) >= 6 and all(type(m) is CpuMlp for m in mlps)


@needs_onednn
def test_mlp_fuses_fc1_and_gelu_with_the_unfused_numbers(backend) -> None:
    """In CPU float32 inference a timm ``Mlp`` runs fc1+GELU as one oneDNN op: bit-identical to the
    unfused oneDNN pair, within 1e-6 of the standard path; training and tanh-GELU keep timm's forward."""
    backend("onednn")
    torch.manual_seed(0)
    mlp = Mlp(48, 192)
    x = torch.randn(3, 70, 48)
    with torch.inference_mode():
        unfused = mlp.fc2(F.gelu(linear(x, mlp.fc1.weight, mlp.fc1.bias)))  # plain Mlp, oneDNN linears
        standard = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
        use_cpu_linear(mlp)
        assert type(mlp) is CpuMlp
        fused = mlp(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            mlp(x)
        calls = [e.name for e in prof.events() if e.name == ONEDNN_OP]
    assert torch.equal(fused, unfused) and rel(fused, standard) < 1e-6
    assert len(calls) == 2  # fc1+GELU fused, then fc2 (three ops unfused)
    x.requires_grad_(True)
    out = mlp(x)  # autograd: timm's forward and its backward
    out.sum().backward()
    assert x.grad is not None and rel(out.detach(), standard) < 1e-6
    tanh = Mlp(48, 192, act_layer=lambda: nn.GELU(approximate="tanh"))
    use_cpu_linear(tanh)
    with torch.inference_mode():
        expected = tanh.fc2(F.gelu(tanh.fc1(x), approximate="tanh"))
        assert torch.equal(tanh(x), expected)


@needs_onednn
def test_model_forward_same_with_either_backend(backend) -> None:
    torch.manual_seed(0)
    model = build_model({"host": "vda", "encoder": {"embed_dim": 64, "depth": 4, "num_heads": 2,
                                                    "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]},
                         "head": {"features": 32, "out_channels": [32, 32, 64, 64], "num_frames": 4},
                         "plugins": [{"name": "gem"}, {"name": "astt"}]}).eval()
    for mm in model.head.motion_modules:  # open the identity-initialised paths
        nn.init.normal_(mm.temporal_transformer.proj_out.weight, std=0.2)
    for plugin in model.plugins.values():
        if hasattr(plugin, "proj_out"):
            nn.init.normal_(plugin.proj_out.weight, std=0.2)
    nn.init.constant_(model.head.scratch.output_conv2[2].bias, 1.0)
    video = torch.randn(1, 4, 3, 56, 70)
    with torch.inference_mode():
        backend("native")
        native = model(video)
        backend("onednn")
        assert ONEDNN_OP in ops_called(lambda: model(video))
        fast = model(video)
    assert rel(fast.depth, native.depth) < 1e-5
    assert rel(fast.pose_enc[-1], native.pose_enc[-1]) < 1e-5


def test_backend_choice_from_environment(monkeypatch, backend) -> None:
    monkeypatch.setenv("GEMDEPTH_CPU_LINEAR", "fastest")
    with pytest.raises(ValueError, match="GEMDEPTH_CPU_LINEAR='fastest'.*auto.*onednn.*native"):
        cpu_linear.cpu_linear_backend()
    monkeypatch.setenv("GEMDEPTH_CPU_LINEAR", "Native")
    assert cpu_linear.cpu_linear_backend() == "native"
    backend("onednn")  # an explicit choice wins over the environment
    assert cpu_linear.cpu_linear_backend() == "onednn"
    with pytest.raises(ValueError, match="expected one of"):
        backend("mkl")


@needs_onednn
@pytest.mark.parametrize(("vendor", "expected"), [("AuthenticAMD", True), ("GenuineIntel", False), ("", False)])
def test_auto_takes_onednn_on_amd_only(monkeypatch, backend, vendor, expected) -> None:
    monkeypatch.setattr(cpu_linear, "_cpu_vendor", lambda: vendor)
    backend("auto")
    assert cpu_linear._onednn_enabled() is expected
    backend("onednn")
    assert cpu_linear._onednn_enabled() is True


@needs_onednn
@pytest.mark.parametrize("choice", ["onednn", "native"])
def test_flop_count_is_the_same_on_either_path(backend, choice) -> None:
    """``gemdepth bench``'s GFLOPs/frame must not drop to the attention alone when oneDNN runs."""
    from gemdepth.flops import measure_flops

    backend(choice)
    model = use_cpu_linear(nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32, bias=False)))
    x = torch.randn(2, 7, 48)
    with torch.inference_mode():
        assert (ONEDNN_OP in ops_called(lambda: model(x))) is (choice == "onednn")
        total, attention = measure_flops(lambda: model(x))
    assert (total, attention) == (2 * 14 * 48 * 96 + 2 * 14 * 96 * 32, 0)
