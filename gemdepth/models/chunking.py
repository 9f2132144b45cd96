"""Memory-bounded micro-batching: run a row-wise stage over slices whose size comes from a budget.

Every stage that treats rows (frames, token positions) independently can run on slices of its
input and give the same numbers as one call on the whole input. The slice size comes from a
byte budget (``max_memory``) divided by an estimate of the stage's working memory per row, so
the peak of one window no longer grows with the number of frames. ``max_memory=None`` runs each
stage on the whole input at once (the unchunked forward).

Modules that chunk carry a ``max_memory`` attribute; :func:`set_max_memory` sets it on all of a
model's modules (``VideoDepthModel.set_max_memory`` calls it). The activation-checkpointing
switches per part (:func:`set_checkpointing`, the model config's ``checkpointing``) live here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from gemdepth.malloc import M_MMAP_THRESHOLD, malloc_trim, mallopt
from gemdepth.models.cpu_linear import capturing_graph

MIN_TOKEN_ROWS = 64  # smallest slice of tokens for row-wise linear layers (same numbers as one call)
DEFAULT_MAX_MEMORY = 64 * 2**20  # bytes of stage working memory per slice (activations, not weights)
GPU_MIN_MAX_MEMORY = 256 * 2**20  # the smallest slice budget a GPU gets (small cards)
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(value: int | float | str | None) -> int | None:
    """``512MB``, ``2GB``, ``1.5g``, ``1073741824`` or a number → bytes; ``None``/``"none"`` → ``None``.

    Units are binary (``1GB`` = 2**30 bytes). ``None`` means "no budget": stages run unchunked.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("max_memory must be a size such as '2GB' or a number of bytes, not a bool")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        text = str(value).strip().lower()
        if text in ("none", "off", "unlimited"):
            return None
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)", text)
        if not match or match.group(2) not in _UNITS:
            raise ValueError(
                f"cannot read the memory size {value!r}: use a number of bytes or a number with a unit "
                f"(e.g. 512MB, 2GB, 1.5GiB), or 'none' for no limit"
            )
        number, unit = float(match.group(1)), match.group(2)
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r} (use 'none' for no limit)")
    return size


def rows_per_chunk(rows: int, bytes_per_row: float, max_memory: int | None, min_rows: int = 1) -> int:
    """How many rows fit in ``max_memory`` at ``bytes_per_row`` (≥ ``min_rows``, ≤ ``rows``; all if no budget).

    ``min_rows`` keeps token slices where BLAS takes the same matrix-multiply path as for the whole
    input (a handful of rows goes through matrix-vector kernels that round differently).
    """
    if max_memory is None or bytes_per_row <= 0:
        return max(rows, 1)
    return int(max(1, min(rows, max(min_rows, max_memory // max(int(bytes_per_row), 1)))))


def _slice(value: Any, index: slice) -> Any:
    if isinstance(value, Tensor):
        return value[index]
    if isinstance(value, (list, tuple)):
        return type(value)(_slice(v, index) for v in value)
    return value


def map_rows(fn: Callable[..., Any], rows: int, chunk: int, *args: Any) -> Any:
    """``fn(*args)`` computed on row slices ``[i : i + chunk]`` of every tensor in ``args`` and joined.

    Tensors (also inside lists/tuples) are sliced along dim 0; other arguments pass as they are.
    ``fn`` returns a tensor or a tuple of tensors with ``rows`` leading rows. Without autograd the
    slices are written into preallocated outputs (no second copy for a concatenation); with it,
    they are concatenated. With ``chunk >= rows`` this is exactly ``fn(*args)``.
    """
    if chunk >= rows:
        return fn(*args)
    outs: list[Tensor] | None = None
    parts: list[tuple[Tensor, ...]] = []
    single = False
    grad = torch.is_grad_enabled()
    for start in range(0, rows, chunk):
        index = slice(start, min(rows, start + chunk))
        result = fn(*(_slice(a, index) for a in args))
        single = isinstance(result, Tensor)
        ys: tuple[Tensor, ...] = (result,) if single else tuple(result)
        if grad:
            parts.append(ys)
            continue
        if outs is None:
            outs = [y.new_empty((rows, *y.shape[1:])) for y in ys]
        for out, y in zip(outs, ys):
            out[index] = y
        del result, ys
    if grad:
        outs = [torch.cat(list(group), dim=0) for group in zip(*parts)]
    assert outs is not None
    return outs[0] if single else tuple(outs)


def set_max_memory(module: nn.Module, max_memory: int | float | str | None) -> int | None:
    """Set the activation budget of every chunking submodule of ``module``; returns it in bytes."""
    budget = parse_memory(max_memory)
    for sub in module.modules():
        if hasattr(sub, "max_memory"):
            sub.max_memory = budget
    return budget


GPU_MAX_MEMORY = 2 * 2**30  # per-slice budget on a large GPU: big slices keep the kernels busy


def default_max_memory(device: str | torch.device) -> int:
    """The per-slice activation budget that suits ``device``.

    CPU: :data:`DEFAULT_MAX_MEMORY` (64 MiB): the peak RSS of a window stays small and BLAS is
    as fast on small slices. Measured (``benchmarks/bench_window_memory.py``, fp32, peak RSS with
    weights and imports; 256 MiB → 128 MiB → 64 MiB): GemDepth-VDA ViT-S 32×518×686 2283 → 2154
    → 2011 MiB (forward 127 → 124 → 127 s on 2 threads), ViT-L 8×518×686 4412 → 4284 → 4286
    MiB; ViT-S 8×196×350 forward 1.85-1.93 s → 1.76-1.78 s at 64 MiB. CUDA: 1/16 of the card's
    memory, at least 256 MiB, at most 2 GiB: on an H200 a ViT-L
    window of 32 frames at 518² runs 15 % faster than with 256 MiB slices (8.7 vs 10.2 ms per
    frame, bf16) and peaks at 5.2 GB; a 24 GB card gets 1.5 GiB, an 8 GB one 512 MiB.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return DEFAULT_MAX_MEMORY
    total = torch.cuda.get_device_properties(device).total_memory
    return int(max(GPU_MIN_MAX_MEMORY, min(GPU_MAX_MEMORY, total // 16)))


def tune_for_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Set the settings that depend on where ``model`` runs (not on its weights or output):
    the memory budget of :func:`default_max_memory` and the DPT head's memory layout.

    The head runs its convolutions in ``channels_last`` (NHWC) except on CUDA with slices under
    1 GiB. Measured: on CPU (oneDNN) NHWC made the quickstart training step's head forward 1.7×
    faster (0.21 → 0.12 s) and inference 5-10 % faster; on an H200 with 2 GiB slices it was as
    fast and peaked lower (5.7 vs 6.9 GB for a ViT-L window of 32×518², bf16), but with 256 MiB
    slices slower (13.6 vs 10.2 ms per frame). Returns ``model``."""
    budget = set_max_memory(model, default_max_memory(device))
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "channels_last"):
        small_gpu_slices = torch.device(device).type == "cuda" and budget is not None and budget < 2**30
        head.channels_last = not small_gpu_slices
    return model


LOW_MEMORY_MMAP_THRESHOLD = 4 * 2**20  # bytes: allocations from this size get their own mapping


def return_freed_memory(threshold: int = LOW_MEMORY_MMAP_THRESHOLD) -> bool:
    """Make the C allocator give freed activations back to the OS at once (glibc only; process-wide).

    glibc serves allocations below a dynamic threshold (up to 32 MB) from its heap and keeps what
    is freed there for reuse, so the resident set of a window stays at its high-water mark plus
    fragmentation. With ``mallopt(M_MMAP_THRESHOLD, threshold)`` every tensor of ``threshold``
    bytes or more is its own mapping, returned when freed. Measured on CPU (one 518×686 window,
    fp32, ``benchmarks/bench_window_memory.py``): peak RSS of GemDepth-VDA ViT-L, 8 frames,
    4086 → 3897 MiB (with 256 MiB slices, before the narrower window: ViT-S 32 frames 2424 → 2038,
    ViT-L 8 frames 4386 → 4067); but 10-20 % more CPU time (fresh pages are faulted in for every
    large tensor: 91 → 110 CPU s at 16 frames), hence opt-in
    (``gemdepth infer --low-memory``). ``MALLOC_MMAP_THRESHOLD_=4194304`` in the environment does
    the same. Returns whether the setting took effect.
    """
    return mallopt(M_MMAP_THRESHOLD, threshold)


RELEASE_MIN_BYTES = 32 * 2**20  # glibc serves up to 32 MiB from its heap: smaller stages barely fragment it


def release_free_heap(x: Tensor, nbytes: int | None = None) -> bool:
    """Between the stages of a large CPU inference forward, hand the C heap's free pages back to the OS.

    Once larger blocks have been freed, glibc serves tensors of up to 32 MiB from its heap and
    keeps the pages of freed ones resident. One stage's slices leave holes that the next stage's
    sizes do not fill, so the resident set of a window grows past what is live: ViT-S, 32 frames
    at 518×686, by ~230 MiB at the last motion module. ``malloc_trim`` at the stage boundaries
    (a few ms each; 38 in a ViT-S window of 32 frames, 0.3 s in all) drops those pages; unlike
    ``--low-memory`` it leaves the allocator's settings alone, so the slices within a stage keep
    reusing warm memory.
    Only for a CPU map ``x`` of ``RELEASE_MIN_BYTES`` or more (``nbytes``: the size of the whole
    stage when ``x`` is one slice of it), without autograd or graph capture.
    """
    size = x.numel() * x.element_size() if nbytes is None else nbytes
    if x.device.type != "cpu" or size < RELEASE_MIN_BYTES or torch.is_grad_enabled() or capturing_graph():
        return False
    return malloc_trim()


def release_between_slices(x: Tensor, sliced: bool, max_memory: int | None, nbytes: int | None = None) -> bool:
    """:func:`release_free_heap` before one slice of a stage on ``x`` (``nbytes``: the stage's inputs).

    A stage that runs in several slices of a large budget (``sliced``) churns about a budget's worth
    of temporaries per slice whatever the size of its map (a motion module over a 32-frame ViT-S
    window at 518×686: ~66 MiB per slice of positions), and the next stage's sizes do not fit their
    holes; so it counts as large as well as one whose map is large.
    """
    size = x.numel() * x.element_size() if nbytes is None else nbytes
    if sliced and max_memory is not None:
        size = max(size, max_memory)
    return release_free_heap(x, nbytes=size)


def tensor_bytes(*values: Any) -> int:
    """Bytes of the tensors among ``values`` (also inside lists/tuples)."""
    total = 0
    for v in values:
        if isinstance(v, Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (list, tuple)):
            total += tensor_bytes(*v)
    return total


def budgeted_modules(module: nn.Module) -> Iterable[nn.Module]:
    """The submodules that read a ``max_memory`` budget."""
    return (sub for sub in module.modules() if hasattr(sub, "max_memory"))


CHECKPOINT_PARTS = ("encoder", "plugins", "head")


def maybe_checkpoint(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, under non-reentrant activation checkpointing when ``enabled`` and autograd is on."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def normalize_checkpointing(value: Any) -> dict[str, bool]:
    """The model config's ``checkpointing``: ``true`` (all parts), a list of parts, or a mapping
    part → bool, with parts ``encoder`` (ViT blocks), ``plugins`` (GEM/ASTT blocks), ``head``
    (DPT stages and motion modules) → ``{part: bool}`` for every part."""
    if value is None or value is False:
        return dict.fromkeys(CHECKPOINT_PARTS, False)
    if value is True:
        return dict.fromkeys(CHECKPOINT_PARTS, True)
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        value = dict.fromkeys(value, True)
    if not isinstance(value, dict):
        raise ValueError(
            f"checkpointing must be true/false, a list of parts or a mapping part → bool "
            f"(parts: {list(CHECKPOINT_PARTS)}), got {value!r}"
        )
    unknown = sorted(set(value) - set(CHECKPOINT_PARTS))
    if unknown:
        raise ValueError(f"unknown checkpointing parts {unknown}; allowed: {list(CHECKPOINT_PARTS)}")
    return {part: bool(value.get(part, False)) for part in CHECKPOINT_PARTS}


def set_checkpointing(model: nn.Module, encoder: bool = False, plugins: bool = False, head: bool = False) -> None:
    """Turn activation checkpointing on/off per part of a ``VideoDepthModel``-like module
    (``encoder``, ``plugins``, ``head`` attributes)."""
    enc = getattr(model, "encoder", None)
    if enc is not None:
        if hasattr(enc, "set_grad_checkpointing"):
            enc.set_grad_checkpointing(encoder)
        else:
            enc.checkpointing = encoder
    for plugin in getattr(model, "plugins", {}).values():
        plugin.checkpointing = plugins
    hd = getattr(model, "head", None)
    if hd is not None:
        hd.checkpointing = head
