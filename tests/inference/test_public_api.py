"""``gemdepth.infer_video`` / ``gemdepth.load_model`` expose their real signatures (every option,
its default and type) to ``inspect``, ``help()`` and IDEs, and ``import gemdepth`` stays light."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys
import typing

import pytest

import gemdepth
import gemdepth.inference.windowing as windowing
import gemdepth.weights as weights


@pytest.mark.parametrize(("name", "implementation"), [("infer_video", windowing.infer_video),
                                                       ("load_model", weights.load_model)])
def test_signature_is_the_implementations(name: str, implementation: typing.Callable) -> None:
    public = getattr(gemdepth, name)
    expected = inspect.signature(implementation)
    got = inspect.signature(public)
    assert got == expected
    assert list(got.parameters) == list(expected.parameters)
    for param in got.parameters.values():
        assert param.kind is not inspect.Parameter.VAR_KEYWORD and param.kind is not inspect.Parameter.VAR_POSITIONAL
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) has no type hint"
    assert got.return_annotation is not inspect.Signature.empty
    hints = typing.get_type_hints(public)  # the hints resolve at run time (no TYPE_CHECKING-only names)
    assert set(hints) == set(got.parameters) | {"return"}
    text = pydoc.render_doc(public)
    for param in got.parameters:
        assert param in text


def test_infer_video_options_and_defaults() -> None:
    params = inspect.signature(gemdepth.infer_video).parameters
    assert params["input_size"].default == 518 and params["window"].default == 32
    assert params["overlap"].default == 10 and params["interp"].default == 8
    assert params["input_size"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(gemdepth.load_model).parameters["device"].default == "cpu"


def test_import_gemdepth_does_not_import_torch() -> None:
    code = "import sys, gemdepth; assert 'torch' not in sys.modules; print(sorted(n for n in dir(gemdepth) if not n.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "infer_video" in out and "load_model" in out


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        gemdepth.nope  # noqa: B018
