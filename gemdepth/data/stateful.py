"""Exact mid-epoch resume of the training stream (Lightning's stateful-dataloader protocol).

The training stream of every (rank, DataLoader worker) is a pure function of ``(seed, epoch,
rank, worker)`` and its *position*: the worker's random generator (shape, source, frames,
stride, crop, flip of each clip) and, per source, the shard generator, the shard being read and
how far, the shards found bad, and which samples sit in the shuffle buffer (as
``(shard, index in shard)``). Each worker attaches its position after a batch to that batch
(``batch["_state"]``, a few hundred bytes); :class:`StatefulStreamLoader` keeps, per worker,
the position of the last batch the trainer *received* (later ones may be in flight) and gives
them to Lightning as ``state_dict()``, which stores it in the checkpoint (all ranks', gathered
under DDP). ``load_state_dict()`` makes the next pass start each worker from its position: the
buffered samples and the open shard are read again (one read per shard), the generators set,
and the worker numbering rotated so that the worker due next in the round-robin order of
PyTorch's DataLoader comes first. So ``fit --ckpt_path last`` continues with exactly the
batches an uninterrupted run would have produced next.

Why hand-written rather than ``torchdata.StatefulDataLoader``: that loader re-implements
PyTorch's DataLoader internals for one torch release (torchdata 0.11: torch 2.6) and would
still need the dataset's own ``state_dict``; our batches are built whole inside one worker, so
their positions can ride along with them through the plain DataLoader.

A position is only valid for the same number of workers, ranks and batches per epoch; with
others, :meth:`StatefulStreamLoader.load_state_dict` warns and starts the next epoch.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader

from gemdepth.data.remote import is_url
from gemdepth.data.shards import RemoteShardError, ShardError

log = logging.getLogger(__name__)

__all__ = ["ResampledSource", "StatefulStreamLoader", "STATE_VERSION"]

STATE_VERSION = 1
#: The key under which a worker's position travels with a training batch.
STATE_KEY = "_state"


def _replay(samples: list[dict], error: ShardError | None) -> Iterator[dict]:
    yield from samples
    if error is not None:
        raise error


class ResampledSource:
    """One source's endless stream of raw samples for one (rank, worker), with a position.

    Shards are drawn with replacement (webdataset-style resampling) from ``shards`` by ``rng``;
    ``keep`` (the key-hash split, or ``None``) filters their samples; a shuffle buffer of
    ``buffer_size`` samples, drawn from by the same ``rng``, mixes consecutive shards.
    ``read_shard(shard)`` yields a shard's raw samples (raising :class:`ShardError`);
    ``on_failure(exc)`` counts (or raises) a failed shard, which is then not drawn again.

    Storage outages: the samples of the last URL shard read whole are kept (one shard). When
    every shard has failed and some of them only because storage was unreachable (not missing,
    not corrupt), the stream does not stop: it serves that last shard again, then probes one
    unreachable shard (with the usual retries; a failure is counted again), and so on until
    storage answers. Training slows down and repeats clips but neither crashes nor hangs.
    """

    def __init__(self, name: str, shards: list[str], keep: Callable[[str], bool] | None,
                 rng: np.random.Generator, buffer_size: int,
                 read_shard: Callable[[str], Iterator[dict]],
                 on_failure: Callable[[ShardError], None]) -> None:
        self.name, self.shards, self.keep, self.rng = name, list(shards), keep, rng
        self.buffer_size = int(buffer_size)
        self.read_shard, self.on_failure = read_shard, on_failure
        self.bad: set[str] = set()
        self.dry = 0  # shards in a row that gave this worker no sample
        self.shard: str | None = None  # the open shard
        self.offset = 0  # samples read from it (before ``keep``)
        self.got = 0  # samples of it kept
        self.live = 0  # shards that could be drawn when it was drawn
        self._it: Iterator[dict] | None = None
        self.buffer: list[tuple[tuple[str, int], dict]] = []
        self.unreachable: set[str] = set()  # shards that failed for want of storage
        self.fallback: str | None = None  # the last URL shard read whole (outage reserve)
        self._fallback_samples: list[dict] = []
        self._collect: list[dict] | None = None  # samples of the open URL shard so far

    def __iter__(self) -> ResampledSource:
        return self

    def __next__(self) -> dict:
        if self.buffer_size <= 1:
            return self._pull()[1]
        while True:  # the same draws as a buffer that pops one sample per sample pushed
            self.buffer.append(self._pull())
            if len(self.buffer) >= self.buffer_size:
                return self.buffer.pop(int(self.rng.integers(len(self.buffer))))[1]

    def _pull(self) -> tuple[tuple[str, int], dict]:
        """The next kept raw sample and its reference ``(shard, index in shard)``."""
        while True:
            if self._it is None:
                live = [s for s in self.shards if s not in self.bad]
                if not live and self._outage():
                    continue
                if not live:
                    raise RuntimeError(f"source {self.name}: every shard of this worker failed "
                                       f"to read ({len(self.bad)} bad); see the warnings above")
                self.shard = live[int(self.rng.integers(len(live)))]
                self.offset, self.got, self.live = 0, 0, len(live)
                self._it = self.read_shard(self.shard)
                self._collect = [] if is_url(self.shard) else None
            try:
                for raw in self._it:
                    if self._collect is not None:
                        self._collect.append(raw)
                    ref = (self.shard, self.offset)
                    self.offset += 1
                    if self.keep is None or self.keep(raw["__key__"]):
                        self.got += 1
                        return ref, raw
                if self._collect:  # read whole: the reserve for an outage
                    self.fallback, self._fallback_samples = self.shard, self._collect
            except ShardError as exc:
                self.on_failure(exc)
                self.bad.add(self.shard)
                if isinstance(exc, RemoteShardError) and not exc.missing:
                    self.unreachable.add(self.shard)
            self._collect = None
            self._it = None
            self.dry = 0 if self.got else self.dry + 1
            if self.dry > 4 * self.live + 10:
                raise RuntimeError(f"source {self.name}: this worker's shards hold no clips for "
                                   "it; use fewer workers or more shards")

    def _outage(self) -> bool:
        """Every shard failed: if storage was only unreachable and a reserve shard is kept,
        open the reserve and let one unreachable shard be drawn after it (a probe)."""
        waiting = sorted(self.unreachable & self.bad)
        if not waiting or not self._fallback_samples:
            return False
        probe = waiting[int(self.rng.integers(len(waiting)))]
        log.warning("source %s: storage unreachable for all %d shard(s) of this worker; "
                    "serving %s again, then retrying %s", self.name, len(self.bad),
                    self.fallback, probe)
        self.bad.discard(probe)
        self.shard, self.offset, self.got, self.live = self.fallback, 0, 0, 1
        self._it = iter(list(self._fallback_samples))
        return True

    # ------------------------------------------------------------------ position
    def state_dict(self) -> dict[str, Any]:
        """The position: plain types only (checkpoints load with ``weights_only=True``)."""
        return {"rng": self.rng.bit_generator.state, "bad": sorted(self.bad), "dry": self.dry,
                "shard": self.shard if self._it is not None else None, "offset": self.offset,
                "got": self.got, "live": self.live, "unreachable": sorted(self.unreachable),
                "fallback": self.fallback if self._fallback_samples else None,
                "buffer": [[shard, index] for (shard, index), _ in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position: the buffered samples and the open shard are read again
        (each shard once); a shard that fails now is counted through ``on_failure``."""
        self.rng.bit_generator.state = state["rng"]
        self.bad = set(state["bad"])
        self.dry, self.got, self.live = int(state["dry"]), int(state["got"]), int(state["live"])
        self.unreachable = set(state.get("unreachable", []))
        refs = [(str(s), int(i)) for s, i in state["buffer"]]
        needed = {s for s, _ in refs} | {s for s in (state["shard"], state.get("fallback")) if s}
        read: dict[str, tuple[list[dict], ShardError | None]] = {}
        for shard in sorted(needed):
            samples: list[dict] = []
            error = None
            try:
                samples.extend(self.read_shard(shard))
            except ShardError as exc:
                error = exc
            read[shard] = (samples, error)
        self.buffer = []
        for ref in refs:
            samples, error = read[ref[0]]
            if ref[1] < len(samples):
                self.buffer.append((ref, samples[ref[1]]))
            elif error is not None:
                self.on_failure(error)
        fallback = state.get("fallback")
        self.fallback, self._fallback_samples = None, []
        if fallback and read[fallback][1] is None:
            self.fallback, self._fallback_samples = fallback, read[fallback][0]
        self.shard, self.offset, self._it, self._collect = None, int(state["offset"]), None, None
        if state["shard"]:
            self.shard = state["shard"]
            samples, error = read[self.shard]
            self._it = _replay(samples[self.offset:], error)
            # a URL shard read to its end becomes the outage reserve, as without the stop
            self._collect = list(samples[:self.offset]) if is_url(self.shard) else None


def _gather(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``local`` (rank order) under torch.distributed, else ``[local]``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [local]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, local)
    return out


_PERSISTENT: weakref.WeakSet[DataLoader] = weakref.WeakSet()


@atexit.register
def _stop_persistent_workers() -> None:
    """Stop the kept worker processes of every live loader before the interpreter tears down.

    Left to garbage collection at interpreter exit, a persistent-worker iterator can be destroyed
    after the modules it needs, which aborts the process ("terminate called without an active
    exception") after a run that otherwise succeeded.
    """
    for loader in list(_PERSISTENT):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            try:
                iterator._shutdown_workers()
            except Exception:  # noqa: BLE001 - best effort at exit
                log.debug("could not stop the workers of %r at exit", loader, exc_info=True)
        loader._iterator = None


class StatefulStreamLoader(DataLoader):
    """DataLoader over a ``ClipStream`` with Lightning's ``state_dict``/``load_state_dict``.

    It advances the stream's epoch on every pass (resampling differs per epoch, seeded), moves
    per-batch skip counts into ``sink``, and records each worker's position from the batches it
    hands out (training streams). ``state_dict()`` holds, per rank: the epoch, the batches
    handed out in it, and each worker's position after its last one.
    """

    def __init__(self, dataset: Any, sink: Callable[[dict], None], start_epoch: int,
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **{"persistent_workers": False, **kwargs})
        if self.persistent_workers:
            _PERSISTENT.add(self)
        self._sink = sink
        self.epoch = start_epoch
        self._position: dict[str, Any] | None = None  # the pass running (or last run)
        self._pending: dict[str, Any] | None = None  # a loaded position for the next pass

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict]:  # type: ignore[override]
        stream = self.dataset
        pending, self._pending = self._pending, None
        done = 0
        workers: list[dict | None] = [None] * self._workers()
        stream._resume = None
        if pending is not None:
            self.epoch, done, workers = pending["epoch"], pending["batches"], list(pending["workers"])
            # PyTorch hands out worker 0's batch first: number the workers so that the one
            # due next (batches handed out mod workers) is worker 0
            stream._resume = {"shift": done % self._workers(), "workers": workers,
                              "epoch": self.epoch}  # persistent workers drop it after that pass
            if self._iterator is not None:  # persistent workers: fresh ones copy the position
                self._iterator._shutdown_workers()
                self._iterator = None
        stream.epoch = self.epoch  # copied into the (fresh) workers by the next line
        try:
            it = super().__iter__()
        finally:
            stream._resume = None  # read by the stream's __iter__ (in the workers, at start)
        position = {"epoch": self.epoch, "batches": done, "workers": workers}
        self._position = position
        self.epoch += 1
        for batch in it:
            self._sink(batch.pop("_skipped", {}))
            state = batch.pop(STATE_KEY, None)
            if state is not None:
                position["workers"][state["worker"]] = state
                position["batches"] += 1
            yield batch

    # ------------------------------------------------------------------ Lightning protocol
    def _local_state(self) -> dict[str, Any]:
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        pos = self._pending or self._position or {
            "epoch": self.epoch, "batches": 0, "workers": [None] * self._workers()}
        train = bool(getattr(self.dataset, "train", False))
        return {"rank": rank, "world_size": world, "num_workers": self._workers(),
                "batches_per_epoch": len(self) if train else None, "epoch": int(pos["epoch"]),
                "batches": int(pos["batches"]), "workers": list(pos["workers"])}

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream position (gathered from all ranks under DDP, so rank 0's
        checkpoint holds them all)."""
        return {"version": STATE_VERSION, "ranks": _gather(self._local_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume this rank's stream where the checkpoint left it (next pass)."""
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        ranks = state_dict.get("ranks") or []
        mine = next((r for r in ranks if r.get("rank") == rank), None)
        if state_dict.get("version") != STATE_VERSION or mine is None:
            log.warning("the checkpoint holds no training-stream position for rank %d; the "
                        "stream starts epoch %d afresh", rank, self.epoch)
            return
        total = len(self) if getattr(self.dataset, "train", False) else None
        epoch, done = int(mine["epoch"]), int(mine["batches"])
        if done == 0 or total is None or done >= total:
            self.epoch = epoch + (done > 0)  # an epoch not begun, or one complete: start afresh
            return
        same = (mine["world_size"], mine["num_workers"], mine["batches_per_epoch"]) == (
            world, self._workers(), total)
        if not same:
            log.warning(
                "the checkpoint's stream ran with %d rank(s) × %d worker(s) and %s batches per "
                "epoch, this run with %d × %d and %d: the epoch cannot continue exactly where "
                "it stopped, so epoch %d starts afresh (keep world size, data.num_workers, "
                "batch_size and samples_per_epoch to resume exactly)", mine["world_size"],
                mine["num_workers"], mine["batches_per_epoch"], world, self._workers(), total,
                epoch + 1)
            self.epoch = epoch + 1
            return
        self.epoch = epoch
        self._pending = {"epoch": epoch, "batches": done, "workers": list(mine["workers"])}
