"""glibc allocator settings (``mallopt``) for the two ends of the memory/speed trade-off:
inference that must return freed activations at once (``gemdepth infer --low-memory``) and
data-loader processes that should reuse freed clip buffers instead of faulting in fresh pages;
and ``malloc_trim``, which hands the free pages inside the heap back to the OS (the large CPU
window forward calls it between its stages: see :func:`gemdepth.models.chunking.release_free_heap`).

Why ctypes: Python exposes no ``mallopt``/``malloc_trim``; they are glibc's (musl and macOS have
none, and these calls then do nothing and say so by returning False). Process-wide, like the
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` environment variables they mirror.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

__all__ = ["M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "mallopt", "malloc_trim"]

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>: free heap top kept before it is given back
M_MMAP_THRESHOLD = -3  # allocations of this size or more get their own mapping


@functools.cache
def _libc_function(name: str) -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None


def mallopt(param: int, value: int) -> bool:
    """``mallopt(param, value)`` of glibc; whether it took effect (False off glibc)."""
    fn = _libc_function("mallopt")
    return fn is not None and bool(fn(ctypes.c_int(param), ctypes.c_int(int(value))))


def malloc_trim(pad: int = 0) -> bool:
    """glibc's ``malloc_trim(pad)``: give the heap's free pages (its top and, since glibc 2.8, whole
    free pages between live blocks) back to the OS. Lowers the resident set, never what is
    allocated; a later allocation there faults fresh pages in. Whether memory was released
    (False off glibc)."""
    fn = _libc_function("malloc_trim")
    return fn is not None and bool(fn(ctypes.c_size_t(int(pad))))
