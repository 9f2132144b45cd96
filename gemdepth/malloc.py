"""glibc allocator settings (``mallopt``) for the two ends of the memory/speed trade-off:
inference that must return freed activations at once (``gemdepth infer --low-memory``) and
data-loader processes that should reuse freed clip buffers instead of faulting in fresh pages.

Why ctypes: Python exposes no ``mallopt``; it is glibc's (musl and macOS have none, and these
calls then do nothing and say so by returning False). Process-wide, like the
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` environment variables they mirror.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "mallopt"]

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>: free heap top kept before it is given back
M_MMAP_THRESHOLD = -3  # allocations of this size or more get their own mapping


@functools.cache
def _libc_mallopt() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None


def mallopt(param: int, value: int) -> bool:
    """``mallopt(param, value)`` of glibc; whether it took effect (False off glibc)."""
    fn = _libc_mallopt()
    return fn is not None and bool(fn(ctypes.c_int(param), ctypes.c_int(int(value))))
