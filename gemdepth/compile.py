"""``torch.compile`` (inductor) for a model's inference calls, falling back to eager with a warning.

:func:`compile_model` compiles ``encode`` and ``decode`` of a
:class:`~gemdepth.models.VideoDepthModel` (so ``forward`` and the cached-encoder windowing both
run compiled graphs) or ``forward`` of any other module. Where the compiler cannot run (no C++
compiler for inductor on CPU, no Triton on CUDA) it says why and leaves the model eager; a call
that fails to compile later warns once and runs eagerly from then on, so ``--compile`` never
turns a working run into a failed one.
"""

from __future__ import annotations

import functools
import logging
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledCall", "compile_model", "compile_unavailable", "is_compiled"]

log = logging.getLogger(__name__)

_PASS_THROUGH = (ValueError, TypeError, KeyError, KeyboardInterrupt, torch.OutOfMemoryError)


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` with inductor cannot run on ``device`` here, or ``None`` if it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo does not support this Python version"
    kind = torch.device(device).type
    if kind == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            compiler = get_cpp_compiler()
        except Exception as err:  # noqa: BLE001 - any failure means no usable compiler
            return f"inductor on CPU needs a C++ compiler (g++ or clang++; set CXX): {err}"
        if shutil.which(compiler) is None:
            return f"inductor on CPU needs a C++ compiler, and {compiler!r} is not on PATH (install g++ or set CXX)"
    elif kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor on CUDA needs Triton (pip install triton, matching your torch)"
    return None


class CompiledCall:
    """A ``torch.compile``-d callable that runs ``eager`` instead (with one warning) once compiling fails.

    Errors a bad input raises (``ValueError``, ``TypeError``, ``KeyError``) and out-of-memory
    pass through unchanged: eager would raise them too.
    """

    def __init__(self, eager: Callable[..., Any], name: str, **compile_kwargs: Any) -> None:
        self.eager = eager
        self.name = name
        self.compiled = torch.compile(eager, **compile_kwargs)
        self.failed: BaseException | None = None
        functools.update_wrapper(self, eager)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except _PASS_THROUGH:
                raise
            except Exception as err:  # noqa: BLE001 - compiler failures come in many types
                self.failed = err
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                warnings.warn(
                    f"torch.compile of {self.name} failed ({type(err).__name__}: {first[:300]}); "
                    f"running it eagerly instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.eager(*args, **kwargs)


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_model` installed compiled calls on ``model``."""
    return bool(getattr(model, "_gemdepth_compiled", False))


def compile_model(
    model: nn.Module, *, mode: str | None = None, dynamic: bool | None = None, strict: bool = False
) -> nn.Module:
    """Install compiled ``encode``/``decode`` (models with the split API) or ``forward``; returns ``model``.

    ``mode``/``dynamic`` go to ``torch.compile`` (``dynamic=None``: a second clip length marks
    the frame dimension dynamic, so the windowing's shorter last encoder batch compiles once).
    Compilation itself happens at the first call. Where the compiler is unavailable
    (:func:`compile_unavailable`) this warns and returns the model unchanged, or raises a
    ``RuntimeError`` with ``strict``.
    """
    if is_compiled(model):
        return model
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    reason = compile_unavailable(device)
    if reason is not None:
        if strict:
            raise RuntimeError(f"torch.compile is unavailable: {reason}")
        warnings.warn(f"torch.compile is unavailable ({reason}); running eagerly", RuntimeWarning, stacklevel=2)
        return model
    kwargs: dict[str, Any] = {"mode": mode, "dynamic": dynamic}
    kind = type(model).__name__
    if callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
        model.encode = CompiledCall(model.encode, f"{kind}.encode", **kwargs)  # type: ignore[method-assign]
        model.decode = CompiledCall(model.decode, f"{kind}.decode", **kwargs)  # type: ignore[method-assign]
    else:
        model.forward = CompiledCall(model.forward, f"{kind}.forward", **kwargs)  # type: ignore[method-assign]
    model._gemdepth_compiled = True  # type: ignore[assignment]
    return model
