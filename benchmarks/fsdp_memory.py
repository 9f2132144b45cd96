"""Per-GPU training memory of GemDepth ViT-g (configs/strategy/fsdp_vitg.yaml) under DDP and
FSDP, from the model built on the meta device (no weights, no GPU needed).

    .venv/bin/python benchmarks/fsdp_memory.py                      # the table in docs/cluster.md
    .venv/bin/python benchmarks/fsdp_memory.py --frames 16 --gpus 8 16 32

States: fp32 weights (4 B/parameter), fp32 gradients and two fp32 AdamW moments (4 + 8 B per
*trainable* parameter); DDP keeps all of it on every GPU, FSDP (full sharding) 1/N of it, plus
the gathered parameters of two units in flight (the one computing, the one prefetched).
Activations: one forward of one clip on the meta device, counting every tensor autograd saves
for backward (parameters excluded; attention as the flash/efficient kernels save it: q, k, v,
output and log-sum-exp, not the T×T matrix), first as is, then with the model's activation
checkpointing (``checkpointing: [plugins, head]``): each checkpointed region keeps only its
inputs, and the largest region's saved tensors come back once during its recomputation.
Counted in fp32; bf16 autocast roughly halves the matmul outputs, so this is an upper bound.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from gemdepth.models.model import build_model

GiB = 2**30


class SavedBytes:
    """Bytes autograd saves, overall and per checkpointable region."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.total = 0
        self.regions: list[tuple[int, int]] = []  # (input bytes, saved bytes inside)
        self._inside: list[int] = []

    def add(self, nbytes: int) -> None:
        self.total += nbytes
        if self._inside:
            self._inside[-1] += nbytes

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in self.params and id(t) not in self.params:
            self.add(t.numel() * t.element_size())
        return t

    def region(self, fn: Callable, *args: Any, **_: Any) -> Any:
        inputs = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
        self._inside.append(0)
        try:
            return fn(*args)
        finally:
            self.regions.append((inputs, self._inside.pop()))


def _sdpa_saving(counter: SavedBytes) -> Callable:
    """SDPA on meta, saving what the fused kernels save (the math fallback would keep T×T)."""
    def sdpa(q, k, v, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.shape[:-1].numel() * 4
        counter.add(sum(x.numel() * x.element_size() for x in (q, k, v, out)) + lse)
        return out.requires_grad_(q.requires_grad or k.requires_grad or v.requires_grad)
    return sdpa


class _NoAutocastOnMeta:
    """``torch.autocast`` that ignores the meta device (it has no autocast dtype)."""

    def __init__(self, device_type: str, *args: Any, **kwargs: Any) -> None:
        self.inner = None if device_type == "meta" else _AUTOCAST(device_type, *args, **kwargs)

    def __enter__(self) -> Any:
        return self.inner.__enter__() if self.inner else None

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc) if self.inner else None


_AUTOCAST = torch.autocast


def activations(cfg: dict, frames: int, size: int, freeze: tuple[str, ...]) -> dict[str, float]:
    """GiB of saved activations of one clip, without and with the model's checkpointing."""
    import gemdepth.models.dpt as dpt
    import gemdepth.models.plugins.astt as astt
    import gemdepth.models.plugins.gem as gem

    with torch.device("meta"):
        model = build_model({k: v for k, v in cfg.items() if k != "checkpointing"})
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(freeze))
    counter = SavedBytes({id(p) for p in model.parameters()})
    patches = [(torch, "autocast", _NoAutocastOnMeta), (F, "scaled_dot_product_attention",
                                                      _sdpa_saving(counter)),
               (gem, "maybe_checkpoint", lambda enabled, fn, *a: counter.region(fn, *a)),
               (astt, "maybe_checkpoint", lambda enabled, fn, *a: counter.region(fn, *a)),
               (dpt, "checkpoint", counter.region)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    model.train().set_checkpointing(plugins=True, head=True)  # regions go through the wrappers
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            model(torch.empty(1, frames, 3, size, size, device="meta"))
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    inside = sum(s for _, s in counter.regions)
    kept = counter.total - inside + sum(i for i, _ in counter.regions)
    peak = max((s for _, s in counter.regions), default=0)
    return {"plain": counter.total / GiB, "checkpointed": (kept + peak) / GiB,
            "regions": len(counter.regions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/strategy/fsdp_vitg.yaml")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    cfg = yaml.safe_load(open(args.config))["model"]["model"]
    strategy = yaml.safe_load(open(args.config))["trainer"]["strategy"]["init_args"]
    with torch.device("meta"):
        model = build_model({k: v for k, v in cfg.items() if k != "checkpointing"})
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:2]) if name.startswith("plugins") else name.split(".")[0]
        parts[key] = parts.get(key, 0) + p.numel()
    total = sum(parts.values())
    from gemdepth.training.strategies import resolve_classes

    classes = resolve_classes(strategy["shard"])
    unit = max(sum(p.numel() for p in m.parameters()) for m in model.modules()
               if isinstance(m, classes))
    print("parameters: " + ", ".join(f"{k} {v / 1e9:.3f} B" for k, v in parts.items())
          + f"; total {total / 1e9:.3f} B; largest FSDP unit {unit / 1e6:.1f} M")
    stages = {"stage 1 (encoder frozen)": ("encoder.",),
              "stage 2 (encoder + GEM frozen)": ("encoder.", "plugins.gem.")}
    for stage, freeze in stages.items():
        trainable = sum(v for k, v in parts.items() if not (k + ".").startswith(freeze))
        act = activations(cfg, args.frames, args.size, freeze)
        print(f"\n{stage}: trainable {trainable / 1e9:.3f} B; activations of one "
              f"{args.frames}-frame {args.size}x{args.size} clip: {act['plain']:.1f} GiB as is, "
              f"{act['checkpointed']:.1f} GiB with checkpointing [plugins, head] "
              f"({act['regions']} regions)")
        print("| GPUs | strategy | weights | grads | AdamW | gathered units | activations | "
              "total (GiB) |")
        print("|---|---|---|---|---|---|---|---|")
        for n in args.gpus:
            for name, shard in (("DDP", 1), ("FSDP", n)):
                w, g, o = 4 * total / shard, 4 * trainable / shard, 8 * trainable / shard
                gathered = 0 if shard == 1 else 2 * 4 * unit
                a = act["checkpointed"] * GiB
                cols = [w, g, o, gathered, a]
                print(f"| {n} | {name} | " + " | ".join(f"{c / GiB:.1f}" for c in cols)
                      + f" | {sum(cols) / GiB:.1f} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
