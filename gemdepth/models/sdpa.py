"""Which fused attention kernel each ``scaled_dot_product_attention`` call of a model can use.

Every attention in the models goes through :func:`torch.nn.functional.scaled_dot_product_attention`.
On CUDA it dispatches to FlashAttention, memory-efficient attention, cuDNN or the unfused math
path depending on dtype, head size, strides, mask and dropout. :func:`attention_report` runs a
forward, records every call (module, shapes, dtype, strides) and asks PyTorch's own dispatcher
checks (``torch.backends.cuda.can_use_*``) which fused kernels accept it. On a CPU tensor every
CUDA check says no; run it with the model and input on the GPU (``benchmarks`` GPU check).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["AttentionCall", "attention_report", "autocast_view", "sdpa_backends"]


def autocast_view(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors as the SDPA kernel receives them: under autocast, floating inputs are cast to its dtype.

    A recorder at the Python level sees the arguments before autocast's dispatcher casts them
    (layer-normed queries are float32 there), so it must apply the same cast to ask the
    kernel checks the right question.
    """
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def sdpa_backends(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                  is_causal: bool = False, enable_gqa: bool = False) -> dict[str, bool]:
    """Whether the flash, memory-efficient and cuDNN kernels accept these SDPA arguments (CUDA only)."""
    if not q.is_cuda:
        return {"flash": False, "efficient": False, "cudnn": False}
    params = torch.backends.cuda.SDPAParams(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa)
    cuda = torch.backends.cuda
    return {
        "flash": bool(cuda.can_use_flash_attention(params, False)),
        "efficient": bool(cuda.can_use_efficient_attention(params, False)),
        "cudnn": bool(cuda.can_use_cudnn_attention(params, False)),
    }


@dataclass
class AttentionCall:
    """One SDPA call: the module that made it and what the kernels see."""

    module: str
    shape: tuple[int, ...]  # query (B, heads, N, D)
    key_length: int
    dtype: str
    last_dim_contiguous: bool
    backends: dict[str, bool] = field(default_factory=dict)

    @property
    def fused(self) -> str:
        """The kernel PyTorch prefers among those that accept the call (``math`` if none)."""
        for name in ("flash", "cudnn", "efficient"):
            if self.backends.get(name):
                return name
        return "math"


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[str], calls: list[AttentionCall]) -> None:
        super().__init__()
        self.stack, self.calls = stack, calls

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = autocast_view(*args[:3])
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
            causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
            self.calls.append(AttentionCall(
                module=self.stack[-1] if self.stack else "",
                shape=tuple(q.shape), key_length=k.shape[-2], dtype=str(q.dtype).replace("torch.", ""),
                last_dim_contiguous=all(t.stride(-1) == 1 for t in (q, k, v)),
                backends=sdpa_backends(q, k, v, mask, dropout, causal),
            ))
        return func(*args, **kwargs)


def attention_report(model: nn.Module, *inputs: Any, **kwargs: Any) -> list[AttentionCall]:
    """Run ``model(*inputs, **kwargs)`` without autograd and return one record per SDPA call."""
    stack: list[str] = []
    calls: list[AttentionCall] = []
    handles = []

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()  # returns None: a forward hook's return value would replace the output

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), _Recorder(stack, calls):
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


def format_report(calls: list[AttentionCall]) -> str:
    """One line per distinct (module, shape, dtype): the kernel each can use."""
    seen: dict[tuple, tuple[AttentionCall, int]] = {}
    for c in calls:
        key = (c.module, c.shape, c.key_length, c.dtype)
        seen[key] = (c, seen.get(key, (c, 0))[1] + 1)
    lines = [f"{'module':48s} {'query shape':24s} {'keys':>6s} {'dtype':9s} calls kernel"]
    for c, n in seen.values():
        lines.append(f"{c.module[:48]:48s} {str(c.shape):24s} {c.key_length:6d} {c.dtype:9s} {n:5d} {c.fused}")
    return "\n".join(lines)
