"""Sharded data-parallel training (FSDP2) as a Lightning strategy that needs no model changes.

Why not Lightning's ``FSDPStrategy``: it wraps with FSDP1, which refuses CPU processes (so it
cannot be tested without GPUs) and needs ``use_orig_params`` tricks for frozen weights.
Lightning's ``ModelParallelStrategy`` runs PyTorch's FSDP2 (``fully_shard``: per-parameter
sharding, frozen and trainable parameters side by side, CPU/gloo and GPU/NCCL alike) but
expects the LightningModule to shard itself in ``configure_model``. :class:`ShardedStrategy`
does that sharding from the config instead: every module of the listed classes becomes one
FSDP unit (its parameters gathered only around its forward and backward), the rest goes with
the root, over all processes of all nodes (pure data parallel, no tensor parallel).

Activation checkpointing stays the model's own switch (``model.model.checkpointing``).
Checkpoints are whole ``.ckpt`` files written on rank 0 by default, interchangeable with DDP's
(``--ckpt_path last``, ``--model.init_weights``); ``save_distributed_checkpoint: true`` writes
one shard per rank into a folder instead (faster for very large models).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import timedelta

import lightning.pytorch as pl
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

__all__ = ["ShardedStrategy", "resolve_classes"]


def resolve_classes(paths: Sequence[str | type]) -> tuple[type[nn.Module], ...]:
    """Module classes from dotted import paths (``"timm.models.vision_transformer.Block"``)."""
    out = []
    for path in paths:
        if isinstance(path, type):
            out.append(path)
            continue
        module, _, name = str(path).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"shard class {path!r} cannot be imported ({exc}); give the dotted "
                             "path of an nn.Module subclass") from exc
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"shard class {path!r} is not an nn.Module subclass")
        out.append(cls)
    return tuple(out)


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over all processes, one unit per module of the ``shard`` classes.

    Args:
        shard: dotted paths of the module classes that become their own FSDP unit (the
            transformer blocks); everything else is sharded with the root module.
        reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3;
            ``False`` keeps them until backward: more memory, one all-gather less).
        save_distributed_checkpoint: one shard per rank in a folder instead of a whole file.
        process_group_backend: ``nccl``/``gloo`` (default: by device).
        timeout: collective timeout.
    """

    def __init__(self, shard: Sequence[str] = (), reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = False,
                 process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.shard_classes = resolve_classes(shard)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process shards
        self._tensor_parallel_size = 1
        super().setup_environment()

    def _shard(self, module: pl.LightningModule) -> int:
        """``fully_shard`` every listed block (innermost first), then each top-level child of
        the LightningModule that holds parameters (the network: FSDP2 gathers a unit's
        parameters in its ``forward``, and Lightning calls ``training_step``, not the
        LightningModule's ``forward``). Returns the number of block units."""
        from torch.distributed.fsdp import fully_shard

        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{type(module).__name__} holds parameters of its own; "
                             "ShardedStrategy shards its child modules only")
        mesh = self.device_mesh["data_parallel"]
        kwargs = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward}
        units = [m for m in module.modules() if isinstance(m, self.shard_classes)]
        for unit in reversed(units):  # children before parents
            fully_shard(unit, **kwargs)
        for child in module.children():
            if any(True for _ in child.parameters()):
                fully_shard(child, **kwargs)
        return len(units)

    def setup(self, trainer: pl.Trainer) -> None:
        """``ModelParallelStrategy.setup`` with the sharding done here (no ``configure_model``)."""
        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        self.lightning_module.configure_model()  # a user's own hook still runs first
        self._shard(self.lightning_module)
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)
