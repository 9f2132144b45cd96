"""Linear layers whose CPU float32 inference runs through oneDNN instead of MKL's sgemm.

PyTorch sends a float32 ``F.linear`` on the CPU to MKL's sgemm, which on AMD CPUs does not use its
fastest kernels: on the 2-core AMD EPYC (Zen 5, AVX-512) this project is developed on it reaches
~200 GFLOP/s, while oneDNN, which PyTorch already uses for every convolution, multiplies the same
matrices 2.2x faster: a ViT-S MLP's ``2808x384 @ 384x1536`` takes 16.8 ms through MKL and 7.4 ms
through oneDNN's linear op (``torch.ops.mkldnn._linear_pointwise``, which Inductor's CPU
weight prepacking also emits), with results within 1.2e-6 relative of MKL's.

:func:`linear` (``F.linear``'s drop-in, for the layers that multiply by slices of a weight) and
:class:`CpuLinear`, an ``nn.Linear`` (same parameters, state-dict keys and type checks) calling it,
take the oneDNN path only where nothing else can be affected: no autograd (training keeps the
standard op and its backward), float32 on the CPU, no autocast, not while ``torch.compile``,
``torch.export`` or tracing captures a graph (they keep the standard op and lower it themselves).
:func:`use_cpu_linear` turns every plain ``nn.Linear`` of a model into one in place, and every
plain timm ``Mlp`` into a :class:`CpuMlp`, whose ``fc1`` and GELU are one fused oneDNN op there
(the models do so when built).

Which path runs is a process-wide choice, :func:`set_cpu_linear_backend` or the environment
variable ``GEMDEPTH_CPU_LINEAR``: ``"auto"`` (default: oneDNN on AMD x86 CPUs, where it was
measured faster, the standard op elsewhere), ``"onednn"`` or ``"native"``.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

__all__ = [
    "CPU_LINEAR_BACKENDS", "CpuLinear", "CpuMlp", "capturing_graph", "cpu_linear_backend", "linear", "linear_gelu",
    "resolved_cpu_linear_backend", "set_cpu_linear_backend", "use_cpu_linear",
]

CPU_LINEAR_BACKENDS = ("auto", "onednn", "native")
ENV_VAR = "GEMDEPTH_CPU_LINEAR"

_choice: str | None = None  # set_cpu_linear_backend's value; None: the environment variable's


def _check(backend: str, source: str) -> str:
    backend = backend.strip().lower()
    if backend not in CPU_LINEAR_BACKENDS:
        raise ValueError(f"{source}={backend!r}: expected one of {CPU_LINEAR_BACKENDS}")
    return backend


def set_cpu_linear_backend(backend: str | None) -> None:
    """Choose how CPU float32 inference computes linear layers (``None``: back to ``GEMDEPTH_CPU_LINEAR``)."""
    global _choice
    _choice = None if backend is None else _check(backend, "cpu linear backend")
    _onednn_enabled.cache_clear()


def cpu_linear_backend() -> str:
    """The configured choice: ``"auto"``, ``"onednn"`` or ``"native"``."""
    if _choice is not None:
        return _choice
    return _check(os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR)


def resolved_cpu_linear_backend() -> str:
    """What CPU float32 inference uses now: ``"onednn"`` or ``"native"`` (``"auto"`` resolved)."""
    return "onednn" if _onednn_enabled() else "native"


@functools.lru_cache(maxsize=1)
def _cpu_vendor() -> str:
    """The x86 vendor string (``AuthenticAMD``, ``GenuineIntel``) from /proc/cpuinfo; '' elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def _onednn_enabled() -> bool:
    backend = cpu_linear_backend()
    if backend == "native" or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    return backend == "onednn" or _cpu_vendor() == "AuthenticAMD"


def capturing_graph() -> bool:
    """Whether ``torch.compile``/export, ``jit.trace`` or ``jit.script`` is capturing a graph right now
    (eager-only shortcuts must then step aside)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether this call may take the oneDNN op (see the module docstring for the conditions)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not capturing_graph()
        and not torch.is_autocast_enabled("cpu")
        and _onednn_enabled()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for CPU float32 inference where that backend is chosen."""
    if _onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact GELU); on the oneDNN path one fused op, which gives
    the same numbers as the unfused oneDNN pair without the hidden-width tensor between them."""
    if _onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return F.gelu(F.linear(x, weight, bias))


class CpuLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (CPU float32 inference through oneDNN where chosen)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class CpuMlp(Mlp):
    """timm's ``Mlp`` whose ``fc1`` and exact GELU run as one oneDNN op in CPU float32 inference
    (:func:`linear_gelu`: ~2 % of a ViT-S forward, and one hidden-width tensor fewer per slice)."""

    def forward(self, x: Tensor) -> Tensor:
        act = self.act
        if (not self.training and type(act) is nn.GELU and act.approximate == "none"
                and isinstance(self.norm, nn.Identity) and _onednn_applies(x, self.fc1.weight)):
            return self.drop2(self.fc2(linear_gelu(x, self.fc1.weight, self.fc1.bias)))
        return super().forward(x)


def use_cpu_linear(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` in ``module`` a :class:`CpuLinear` and every plain timm ``Mlp`` a
    :class:`CpuMlp`, in place (same object, same parameters and hooks: only the class changes, so
    references held elsewhere stay valid). Subclasses are left as they are (their ``forward`` may differ)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = CpuLinear
        elif type(child) is Mlp:
            child.__class__ = CpuMlp
    return module
