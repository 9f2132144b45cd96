"""torch.compile readiness: the windowing's encode/decode calls trace without graph breaks for
every host and plug-in combination, and ``compile_model`` falls back to eager with a warning."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import gemdepth.compile as gcompile
from gemdepth.compile import CompiledCall, compile_model, compile_unavailable, is_compiled
from gemdepth.models import build_model

CONFIGS = Path(__file__).resolve().parent / "configs"


def _config(name: str, plugins: list[str] | None = None) -> dict:
    cfg = yaml.safe_load((CONFIGS / f"official_mini_{name}.yaml").read_text())
    if plugins is not None:
        cfg["plugins"] = [p for p in cfg.get("plugins") or [] if p["name"] in plugins]
    return cfg


COMBINATIONS = {
    "dav2": _config("dav2"),
    "vda": _config("vda"),
    "vda+gem": _config("gemdepth", ["gem"]),
    "vda+astt": _config("gemdepth", ["astt"]),
    "vda+gem+astt": _config("gemdepth"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_windowing_calls_trace_without_graph_breaks(name) -> None:
    """The calls the cached-encoder windowing makes: encode(new frames), decode(whole window)."""
    torch.manual_seed(0)
    model = build_model(COMBINATIONS[name]).eval()
    frames = 8 if name == "dav2" else 32
    new = torch.randn(1, 5, 3, 28, 42)
    torch._dynamo.reset()
    with torch.inference_mode():
        encode = torch._dynamo.explain(model.encode)(new)
        encoded = model.encode(torch.randn(1, frames, 3, 28, 42))
        decode = torch._dynamo.explain(model.decode)(encoded, 1, frames, 28, 42)
    for what, explanation in (("encode", encode), ("decode", decode)):
        assert explanation.graph_break_count == 0, (what, [str(b.reason) for b in explanation.break_reasons])
        assert explanation.graph_count == 1, what


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)).eval()


def test_unavailable_compiler_warns_and_stays_eager(monkeypatch) -> None:
    monkeypatch.setattr(gcompile, "compile_unavailable", lambda device: "no C++ compiler here")
    model = _tiny()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here.*running eagerly"):
        assert compile_model(model) is model
    assert not is_compiled(model) and "forward" not in vars(model)
    with pytest.raises(RuntimeError, match="torch.compile is unavailable: no C\\+\\+ compiler here"):
        compile_model(_tiny(), strict=True)


def test_compile_unavailable_names_the_missing_tool(monkeypatch) -> None:
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("no compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    assert "needs a C++ compiler" in compile_unavailable("cpu")


def test_a_failing_compile_falls_back_to_eager_once() -> None:
    model = _tiny()
    x = torch.randn(3, 4)
    call = CompiledCall(model.forward, "tiny.forward")

    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: C++ compile error")

    call.compiled = broken
    with pytest.warns(RuntimeWarning, match="torch.compile of tiny.forward failed.*C\\+\\+ compile error"):
        out = call(x)
    torch.testing.assert_close(out, model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        call(x)

    def bad_input(*args, **kwargs):
        raise ValueError("video must be 5-D")

    other = CompiledCall(model.forward, "tiny.forward")
    other.compiled = bad_input
    with pytest.raises(ValueError, match="5-D"):  # the user's error, not a compiler failure
        other(x)
    assert other.failed is None


def test_compile_model_installs_compiled_calls_on_the_split_api() -> None:
    model = build_model(COMBINATIONS["vda+gem+astt"]).eval()
    if compile_unavailable("cpu") is not None:
        pytest.skip(f"torch.compile unavailable: {compile_unavailable('cpu')}")
    reference = copy.deepcopy(model)
    compile_model(model)
    assert is_compiled(model)
    assert isinstance(vars(model)["encode"], CompiledCall) and isinstance(vars(model)["decode"], CompiledCall)
    assert compile_model(model) is model  # idempotent
    assert reference.state_dict().keys() == model.state_dict().keys()


def test_bench_compile_refuses_clearly_without_a_compiler(monkeypatch, capsys) -> None:
    from gemdepth.bench import main as bench_main

    monkeypatch.setattr(gcompile, "compile_unavailable", lambda device: "no C++ compiler here")
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--presets", str(CONFIGS / "official_mini_vda.yaml"), "--sizes", "28x28", "--frames", "2",
                    "--device", "cpu", "--compile"])
    assert exit_info.value.code == 2
    assert "--compile: torch.compile cannot run here: no C++ compiler here" in capsys.readouterr().err
