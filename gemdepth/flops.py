"""FLOP counting that sees attention on every supported torch.

:class:`torch.utils.flop_counter.FlopCounterMode` only counts ops it has a formula for, and which
kernel ``F.scaled_dot_product_attention`` dispatches to depends on the torch release, the device,
the dtype and the shapes (torch 2.14 on CPU runs ``_scaled_dot_product_flash_attention_for_cpu``,
which has no registered formula, so attention counted as 0; other shapes take the math path,
counted as plain ``bmm``). Two layers make the count independent of that choice:

- :func:`flop_counter` adds formulas for every fused SDPA kernel this torch exposes, computed from
  the shapes as torch's own formulas are (2 FLOPs per multiply-add of ``QKᵀ`` and ``PV``; softmax,
  scaling and masking are not counted, as in torch's registry);
- :class:`AttentionCalls` sees each ``F.scaled_dot_product_attention`` call above the dispatcher,
  counts its FLOPs analytically (the attention share, whatever kernel ran) and, should a kernel
  still be unknown to the counter (nothing counted during the call), adds the analytic figure so
  the total stays right.

:func:`measure_flops` combines both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

Shape = Sequence[int]


def sdpa_forward_flops(query: Shape, key: Shape, value: Shape) -> int:
    """FLOPs of ``softmax(QKᵀ)V`` for ``(…, L, E)`` queries and ``(…, S, E)``/``(…, S, Ev)`` keys/values."""
    *batch, length, dim = query
    source = key[-2]
    value_dim = value[-1]
    heads = 1
    for size in batch:
        heads *= int(size)
    return 2 * heads * length * source * dim + 2 * heads * length * source * value_dim


def sdpa_backward_flops(query: Shape, key: Shape, value: Shape) -> int:
    """FLOPs of the SDPA backward as torch counts them: ``QKᵀ`` recomputed, then ``dP = dO Vᵀ``,
    ``dV = PᵀdO``, ``dQ = dS K`` and ``dK = dSᵀQ``."""
    *batch, length, dim = query
    source = key[-2]
    value_dim = value[-1]
    heads = 1
    for size in batch:
        heads *= int(size)
    return 2 * heads * length * source * (3 * dim + 2 * value_dim)


def _shape(x: Any) -> Shape:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)


def _forward_formula(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_forward_flops(_shape(query), _shape(key), _shape(value))


def _backward_formula(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flops(_shape(query), _shape(key), _shape(value))


# Fused SDPA kernels by (aten name, first tensor argument is the query (forward) or grad_out (backward)).
# Names missing from an older/newer torch are skipped; the argument orders are aten's schemas.
_FORWARD_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)
_BACKWARD_KERNELS = (
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def _onednn_linear_formula(x: Any, weight: Any, *args: Any, **kwargs: Any) -> int:
    """``x (…, K) @ weight (N, K)ᵀ``: 2 FLOPs per multiply-add, the bias not counted (as torch's addmm)."""
    x_shape, w_shape = _shape(x), _shape(weight)
    rows = 1
    for size in x_shape[:-1]:
        rows *= int(size)
    return 2 * rows * int(x_shape[-1]) * int(w_shape[0])


def sdpa_formulas() -> dict[Any, Callable[..., int]]:
    """``{op: formula}`` for every fused SDPA kernel this torch build has, and the oneDNN linear op
    (:mod:`gemdepth.models.cpu_linear`'s CPU path, which torch's registry does not know either)."""
    formulas: dict[Any, Callable[..., int]] = {}
    for names, formula in ((_FORWARD_KERNELS, _forward_formula), (_BACKWARD_KERNELS, _backward_formula)):
        for name in names:
            op = getattr(torch.ops.aten, name, None)
            if op is not None:
                formulas[op] = _raw(formula)
    onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if onednn_linear is not None:
        formulas[onednn_linear] = _raw(_onednn_linear_formula)
    return formulas


def _raw(formula: Callable[..., int]) -> Callable[..., int]:
    def counted(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        return formula(*args, **kwargs)

    counted._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes tensors as they are
    return counted


def flop_counter(display: bool = False, depth: int = 2) -> FlopCounterMode:
    """A :class:`FlopCounterMode` that counts every SDPA kernel (see the module docstring)."""
    return FlopCounterMode(display=display, depth=depth, custom_mapping=sdpa_formulas())


def attention_flops(counter: FlopCounterMode) -> int:
    """The share of a finished count that went through scaled-dot-product attention."""
    return int(
        sum(n for op, n in counter.get_flop_counts().get("Global", {}).items() if "scaled_dot_product" in str(op))
    )


class AttentionCalls(TorchFunctionMode):
    """Counts ``F.scaled_dot_product_attention`` calls and their FLOPs from the shapes.

    With ``counter`` (an active :class:`FlopCounterMode`), a call during which the counter
    recorded nothing (a kernel without a formula) is added to :attr:`uncounted`.
    """

    def __init__(self, counter: FlopCounterMode | None = None) -> None:
        super().__init__()
        self.counter = counter
        self.calls = 0
        self.flops = 0
        self.uncounted = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = (kwargs[n] if n in kwargs else args[i] for i, n in enumerate(("query", "key", "value")))
        flops = sdpa_forward_flops(_shape(query), _shape(key), _shape(value))
        before = self.counter.get_total_flops() if self.counter is not None else 0
        out = func(*args, **kwargs)
        self.calls += 1
        self.flops += flops
        if self.counter is not None and self.counter.get_total_flops() == before:
            self.uncounted += flops
        return out


def measure_flops(fn: Callable[[], Any]) -> tuple[int, int]:
    """``(total, attention)`` FLOPs of ``fn()``: every op torch can count, attention from the shapes."""
    with flop_counter() as counter, AttentionCalls(counter) as attention:
        fn()
    return int(counter.get_total_flops()) + attention.uncounted, attention.flops
