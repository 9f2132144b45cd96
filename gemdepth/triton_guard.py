"""Keep Triton out of processes that have no GPU to run it on (76 MiB resident saved on CPU).

The CUDA build of PyTorch installs Triton beside it, and the import chain ``timm`` →
``torchvision.ops`` → ``torch._dynamo.utils`` asks ``torch.utils._triton.has_triton_package()``,
which imports ``triton`` and its compiler library (``libtriton.so``): measured here, 76 MiB of a
CPU inference process's resident memory (ViT-S weights are 271 MiB) for a package that only
compiles GPU kernels. :func:`skip_unusable_triton` runs before the model code imports timm: on a
machine without an accelerator it answers that check with "no Triton", exactly what PyTorch's
CPU build sees, and leaves ``import triton`` itself working for anyone who asks later.

Set ``GEMDEPTH_IMPORT_TRITON=1`` to keep the default behaviour. Nothing changes when Triton is
already imported, when an accelerator is present, or when torch has no such check.
"""

from __future__ import annotations

import os
import sys

__all__ = ["skip_unusable_triton"]

ENV_KEEP = "GEMDEPTH_IMPORT_TRITON"


def _accelerator_present(torch: object) -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_available())


def skip_unusable_triton() -> bool:
    """Without an accelerator, cache PyTorch's "is Triton installed?" answer as False before
    anything imports Triton; returns whether it did (see the module docstring)."""
    if os.environ.get(ENV_KEEP, "").strip().lower() in ("1", "true", "yes", "on") or "triton" in sys.modules:
        return False
    import torch

    if _accelerator_present(torch):
        return False
    try:
        from torch.utils._triton import has_triton_package
    except ImportError:  # an older or newer torch without the check: nothing to answer
        return False
    if getattr(has_triton_package, "cache_info", None) is None:  # not cached: the answer would not stick
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` fails, as on a CPU build
    try:
        answered = has_triton_package() is False
    finally:
        if sys.modules.get("triton", 0) is None:
            del sys.modules["triton"]
    return answered
