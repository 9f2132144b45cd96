"""``VideoDataModule``: streams shards into training batches (INTERFACES.md "Training batch").

Per stage, sources map a name to ``{path, weight, max_depth, sky, on_error}``; clips are mixed
by weight (uniform by default, as the paper), sub-clips of ``clip_length`` frames are drawn
with a random stride, cropped at one of several resolutions (paper A.2: short side 518, aspect
variants; one shape per batch), optionally mirrored, and far/sky depth is truncated.

Streaming (webdataset): each source's shard list is split by node and by DataLoader worker
(``wds.split_by_node``/``wds.split_by_worker``) so ranks and workers read disjoint clips, then
resampled with a seeded per-(epoch, rank, worker) generator with a small clip shuffle buffer.
Sources with fewer shards than ``world_size × workers`` fall back to a split by key hash
(every worker reads all shards, keeps its share; a warning suggests more shards). Each batch
is produced whole by one worker, which picks its shape first, so all clips of a batch share
it. Decoding runs in the worker processes; RGB is cropped as uint8 before resizing.

Bad samples in ``skip`` mode are skipped and counted per ``<corpus>/<reason>``; the counts
travel with the batches and add up in :attr:`VideoDataModule.skipped` in the main process
(log ``data/skipped`` from :attr:`VideoDataModule.skipped_total`).

Shards may be URLs (``http(s)://``, fsspec URLs such as ``s3://``, ``pipe:`` commands; see
:mod:`gemdepth.data.remote`): fetched whole with retries and timeouts (``remote_retries``,
``remote_backoff``, ``remote_timeout``, ``storage_options``); one that stays unreachable is a
counted skip (``<source>/unreachable_shard``, or ``<source>/missing_shard`` for a 404).

Resume: the training loader follows Lightning's stateful-dataloader protocol
(:mod:`gemdepth.data.stateful`): a checkpoint holds every rank's and worker's stream position,
and ``fit --ckpt_path`` continues mid-epoch with exactly the batches an uninterrupted run
would have produced next.

Checksums: each worker process (kept across epochs with ``persistent_workers``) checks a
shard's sha256 (from ``index.json``) the first time it reads it, before using any of its
samples (the shard is read once into memory and hashed there). A mismatch drops the whole
shard for that worker: counted once as ``<source>/checksum_mismatch`` and logged with the shard's name in ``skip`` mode, raised in ``raise`` mode.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from gemdepth.data.codecs import png_mask
from gemdepth.data.remote import RemoteOptions, is_url, parent_url
from gemdepth.data.schema import ClipError
from gemdepth.data.shards import (
    ChecksumError,
    RemoteShardError,
    ShardError,
    decode_depth_bits,
    decode_sample,
    iter_raw_samples,
    parse_header,
    read_index,
    remote_index,
    resolve_shards,
)
from gemdepth.data.stateful import STATE_KEY, ResampledSource, StatefulStreamLoader
from gemdepth.data.transforms import (
    PAPER_SIZES,
    crop_intrinsics,
    crop_nearest,
    decode_crop_rgb,
    flip_extrinsics,
    flip_intrinsics,
    plan_crop,
)
from gemdepth.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt

__all__ = ["VideoDataModule", "SourceSpec", "ClipStream", "parse_sources", "IMAGENET_MEAN",
           "IMAGENET_STD"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_SKY_MODES = ("far", "invalid")
_NORMALIZE_MODES = ("worker", "device")
_ERROR_MODES = ("skip", "raise")
_MAX_CONSECUTIVE_FAILURES = 200
_FLOAT16_MAX_BITS = 0x7BFF  # bit pattern of float16's largest finite value (65504)
_FLOAT16_NEGATIVE_ZERO = 0x8000
_NORM_SCALE = torch.from_numpy(1.0 / (255.0 * IMAGENET_STD))[:, None, None]
_NORM_SHIFT = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD)[:, None, None]


#: A loader process's glibc settings: buffers up to this size come from the heap, and this much
#: free heap is kept, so each clip reuses the last clip's memory (a 32-frame 518² clip allocates
#: ~100 MB of crops, depth and masks) instead of faulting in fresh pages for it.
_LOADER_MMAP_THRESHOLD = 256 * 2**20
_LOADER_TRIM_THRESHOLD = 1024 * 2**20


@functools.cache
def reuse_clip_buffers() -> bool:
    """Make this (DataLoader worker) process reuse freed clip buffers: glibc otherwise maps
    every buffer over 32 MB afresh and zero-fills its pages (~7 % of a worker's CPU time at
    518², measured with ``MALLOC_MMAP_THRESHOLD_`` on ``bench_datamodule.py``'s corpus); costs
    up to the trim threshold of retained free memory per worker. Called once per worker
    process (never in the training process); False where the C library is not glibc."""
    return (mallopt(M_MMAP_THRESHOLD, _LOADER_MMAP_THRESHOLD)
            and mallopt(M_TRIM_THRESHOLD, _LOADER_TRIM_THRESHOLD))


def _finite_non_negative(bits: np.ndarray) -> bool:
    """Whether float16 bit patterns (native uint16) are all finite and >= 0 (-0.0 included, as
    ``min() >= 0`` would say). One integer reduction in the usual case: positive finite float16s
    are exactly the patterns 0x0000-0x7BFF (numpy's float16 reductions are ~50x slower)."""
    if bits.size == 0 or int(bits.max()) <= _FLOAT16_MAX_BITS:
        return True
    return bool(((bits <= _FLOAT16_MAX_BITS) | (bits == _FLOAT16_NEGATIVE_ZERO)).all())


def _float16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of float16 bit patterns (native uint16), through torch's vectorised
    conversion (numpy converts float16 element by element, ~10x slower)."""
    return torch.from_numpy(bits.view(np.int16)).view(torch.float16).float().numpy()


def _fast_mask(data: bytes, where: tuple[str, str, str]) -> np.ndarray:
    """A mask PNG's values (non-zero = set; cast to bool after cropping, which is cheaper)."""
    try:
        return png_mask(data)
    except ValueError as exc:
        raise ShardError(f"undecodable mask ({exc})", shard=where[0], key=where[1],
                         field=where[2]) from exc


def _empty_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, in shared memory inside a DataLoader worker so that sending
    the batch to the main process needs no extra copy (what torch's ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
    return elem.new(storage).view(shape)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    if len(tensors) == 1:  # a batch of one clip (the paper's): a view, no copy here (a worker's
        return tensors[0].unsqueeze(0)  # queue moves it to shared memory, as it would the stack)
    return torch.stack(tensors, out=_empty_shared((len(tensors), *tensors[0].shape),
                                                  tensors[0].dtype))


def normalize_video(video: torch.Tensor) -> torch.Tensor:
    """float32 ``(x / 255 - mean) / std`` of uint8 video ``(..., 3, H, W)`` on its device."""
    scale, shift = _NORM_SCALE.to(video.device), _NORM_SHIFT.to(video.device)
    return torch.addcmul(shift, video, scale)


def _decode_mask(data: bytes, where: tuple[str, str, str]) -> np.ndarray:
    """bool mask of a PNG payload."""
    try:
        return np.asarray(Image.open(io.BytesIO(data))).astype(bool)
    except Exception as exc:  # PIL raises many types for broken files
        raise ShardError(f"undecodable mask ({exc})", shard=where[0], key=where[1],
                         field=where[2]) from exc


@dataclass
class SourceSpec:
    """One corpus in a stage's mix.

    ``max_depth``: metric depth beyond it is truncated to it (``None``: no truncation).
    ``sky``: ``"far"`` (sky pixels supervised at ``max_depth``, disparity 0 for relative
    corpora, as the paper's A.2) or ``"invalid"`` (sky pixels masked out).
    ``on_error``: ``"skip"`` (count and go on) or ``"raise"``; ``None`` picks ``skip`` for
    training and ``raise`` for validation/test.
    """

    name: str
    path: str
    weight: float = 1.0
    max_depth: float | None = 400.0
    sky: str = "far"
    on_error: str | None = None
    shards: tuple[str, ...] = ()
    has_pose: bool | None = None
    depth_kind: str | None = None
    checksums: Mapping[str, str | None] = field(default_factory=dict)  # shard -> sha256
    sizes: Mapping[str, int | None] = field(default_factory=dict)  # URL shard -> bytes (index)


def parse_sources(sources: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> list[SourceSpec]:
    """Source specs of a ``name -> {path, weight, ...}`` (or ``name -> path``) mapping."""
    if not sources:
        return []
    allowed = {"path", "weight", "max_depth", "sky", "on_error"}
    specs = []
    for name, value in sources.items():
        entry = {"path": value} if isinstance(value, (str, Path)) else dict(value)
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"source {name!r}: unknown keys {sorted(unknown)} (allowed: "
                             f"{sorted(allowed)})")
        if "path" not in entry:
            raise ValueError(f"source {name!r}: needs a 'path' to its shards")
        spec = SourceSpec(name=str(name), path=str(entry["path"]),
                          **{k: entry.get(k, defaults.get(k)) for k in allowed - {"path"}
                             if k in entry or k in defaults})
        if spec.weight is None or not spec.weight > 0:
            raise ValueError(f"source {name!r}: weight must be > 0, got {spec.weight}")
        if spec.sky not in _SKY_MODES:
            raise ValueError(f"source {name!r}: sky must be one of {_SKY_MODES}, got {spec.sky!r}")
        if spec.on_error is not None and spec.on_error not in _ERROR_MODES:
            raise ValueError(f"source {name!r}: on_error must be one of {_ERROR_MODES}")
        specs.append(spec)
    return specs


def _resolve(spec: SourceSpec, remote: RemoteOptions | None = None) -> SourceSpec:
    """Fill a spec's shard list (and corpus facts from its index, when there is one)."""
    pairs = resolve_shards(spec.path, remote)
    urls = [str(p) for p, _ in pairs if is_url(str(p))]
    if urls:  # remote corpora: facts and shard sizes from their (already read) indexes
        corpora = {parent_url(u) for u in urls}
        indexes = {c: remote_index(c, remote) for c in corpora}
        sizes = {c + "\0" + s["name"]: s.get("bytes") for c, i in indexes.items()
                 for s in i["shards"]}
        index = next(iter(indexes.values())) if len(indexes) == 1 and len(urls) == len(pairs) \
            else None
        from gemdepth.data.remote import shard_url_name

        return SourceSpec(**{**spec.__dict__, "shards": tuple(str(p) for p, _ in pairs),
                             "checksums": {str(p): digest for p, digest in pairs},
                             "sizes": {u: sizes.get(parent_url(u) + "\0" + shard_url_name(u))
                                       for u in urls},
                             "has_pose": index.get("has_pose") if index else None,
                             "depth_kind": index.get("depth_kind") if index else None})
    folders = {p.parent for p, _ in pairs}
    index = read_index(folders.pop()) if len(folders) == 1 else None
    return SourceSpec(**{**spec.__dict__, "shards": tuple(str(p) for p, _ in pairs),
                         "checksums": {str(p): digest for p, digest in pairs},
                         "has_pose": index.get("has_pose") if index else None,
                         "depth_kind": index.get("depth_kind") if index else None})


class _Skip(Exception):
    """A sample that cannot be used: ``reason`` is its counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClipStream(IterableDataset):
    """Batches of processed clips; each batch is built whole inside one worker.

    ``train=True``: endless resampled mix of sources, ``batches_per_epoch`` per rank (split
    over workers), random shape per batch, stride, crop offset and flip. ``train=False``:
    one deterministic pass over each source's shards, first ``clip_length`` frames at stride
    1 (every stored frame with ``whole_clips``), centre crop at ``eval_size``.
    """

    def __init__(self, sources: Sequence[SourceSpec], *, train: bool, batch_size: int,
                 clip_length: int, stride_range: tuple[int, int], short_side: int,
                 sizes: Sequence[tuple[int, int]], eval_size: tuple[int, int],
                 crop_jitter: float, hflip_prob: float, samples_per_epoch: int, seed: int,
                 shuffle_buffer: int, whole_clips: bool = False, fast_decode: bool = True,
                 normalize: str = "worker", decode_threads: int = 1,
                 remote: RemoteOptions | None = None) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ClipStream needs at least one source")
        self.sources = list(sources)
        self.train = train
        self.batch_size = batch_size
        self.clip_length = clip_length
        self.stride_range = (int(stride_range[0]), int(stride_range[1]))
        self.short_side = short_side
        self.sizes = [tuple(int(v) for v in s) for s in sizes]
        self.eval_size = tuple(int(v) for v in eval_size)
        self.crop_jitter = crop_jitter
        self.hflip_prob = hflip_prob
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.whole_clips = whole_clips
        if normalize not in _NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
        self.fast_decode = fast_decode
        self.normalize = normalize
        self.decode_threads = max(1, int(decode_threads))
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): made per worker
        # the epoch lives in shared memory: persistent DataLoader workers keep their copy of the
        # stream across passes and read the epoch the loader sets for each pass from here
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        weights = np.array([s.weight for s in self.sources], np.float64)
        self._probs = weights / weights.sum()
        self._skips: Counter[str] = Counter()
        self._verified: set[str] = set()  # shards whose sha256 this worker has checked
        self.remote = remote or RemoteOptions()
        # set by the loader for one pass: {"shift": worker renumbering, "workers": positions}
        self._resume: dict[str, Any] | None = None

    @property
    def epoch(self) -> int:
        """The pass being streamed (seeds the resampling), shared with the worker processes."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    # ------------------------------------------------------------------ sizes
    def batches_per_rank(self) -> int:
        """Training batches each rank yields per epoch (``ceil(samples / (B·world))``)."""
        _, world, _, _ = wds.utils.pytorch_worker_info()
        return max(1, math.ceil(self.samples_per_epoch / (self.batch_size * world)))

    def __len__(self) -> int:
        if self.train:
            return self.batches_per_rank()
        raise TypeError("evaluation streams have no precomputed length")

    # ------------------------------------------------------------------ splitting
    def _worker_info(self) -> tuple[int, int, int, int]:
        """``(rank, world, worker, workers)`` with the worker numbered as the stream sees it:
        a resumed pass rotates the numbers (see :mod:`gemdepth.data.stateful`)."""
        rank, world, worker, nworkers = wds.utils.pytorch_worker_info()
        shift = self._resume["shift"] if self._resume else 0
        return rank, world, (worker + shift) % max(1, nworkers), nworkers

    def _my_shards(self, spec: SourceSpec) -> tuple[list[str], Callable[[str], bool] | None]:
        """This (rank, worker)'s shards of a source and, in the fallback, its key filter."""
        rank, world, worker, nworkers = self._worker_info()
        total = world * nworkers
        shards = list(spec.shards)
        if total <= 1:
            return shards, None
        if len(shards) >= total:  # webdataset's split_by_node, then split_by_worker
            return shards[rank::world][worker::nworkers], None
        if rank == 0 and worker == 0:
            (log.warning if self.train else log.info)("source %s has %d shards for %d ranks×workers: every worker reads all of "
                        "them and keeps its share by key; write smaller shards "
                        "(clips_per_shard) to avoid the extra reading", spec.name, len(shards),
                        total)
        gid = rank * nworkers + worker
        return shards, lambda key: zlib.crc32(key.encode()) % total == gid

    # ------------------------------------------------------------------ errors
    def _on_error(self, spec: SourceSpec) -> str:
        return spec.on_error or ("skip" if self.train else "raise")

    def _skip(self, spec: SourceSpec, reason: str, exc: Exception) -> None:
        key = f"{spec.name}/{reason}"
        self._skips[key] += 1
        if self._skips[key] <= 3:
            log.warning("skipping a sample of %s (%s): %s", spec.name, reason, exc)

    # ------------------------------------------------------------------ raw streams
    def _shard_samples(self, spec: SourceSpec, shard: str) -> Iterator[dict]:
        """Raw samples of a shard; its sha256 is checked on this worker's first read (before
        any sample comes out: :class:`ChecksumError` drops the whole shard)."""
        digest = None if shard in self._verified else spec.checksums.get(shard)
        if is_url(shard):
            it = iter_raw_samples(shard, digest, size=spec.sizes.get(shard), remote=self.remote)
        else:
            it = iter_raw_samples(shard, digest)
        for raw in it:
            self._verified.add(shard)
            yield raw

    def _shard_failed(self, spec: SourceSpec, exc: ShardError) -> None:
        if self._on_error(spec) == "raise":
            raise exc
        if isinstance(exc, RemoteShardError):
            reason = "missing_shard" if exc.missing else "unreachable_shard"
        else:
            reason = "checksum_mismatch" if isinstance(exc, ChecksumError) else "corrupt_shard"
        self._skip(spec, reason, exc)

    def _raw_once(self, spec: SourceSpec, shards: list[str],
                  keep: Callable[[str], bool] | None) -> Iterator[dict]:
        for shard in shards:
            try:
                for raw in self._shard_samples(spec, shard):
                    if keep is None or keep(raw["__key__"]):
                        yield raw
            except ShardError as exc:
                self._shard_failed(spec, exc)

    # ------------------------------------------------------------------ one clip
    def _frames(self, n_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None and self.whole_clips:
            return np.arange(n_frames)
        n = self.clip_length
        if n_frames < n:
            raise _Skip("too_short", f"clip has {n_frames} frames, need clip_length={n}")
        if rng is None or n == 1:
            return np.arange(n)
        lo, hi = self.stride_range
        stride = int(rng.integers(lo, hi + 1))
        stride = max(1, min(stride, (n_frames - 1) // (n - 1)))
        span = (n - 1) * stride + 1
        start = int(rng.integers(0, n_frames - span + 1))
        return start + stride * np.arange(n)

    def _threads(self) -> ThreadPoolExecutor | None:
        """This process's frame-decoding threads (``decode_threads > 1``; none after a fork)."""
        if self.decode_threads <= 1:
            return None
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(self.decode_threads,
                                                          thread_name_prefix="gemdepth-decode"))
        return self._pool[1]

    def _map(self, fn: Callable[[Any], np.ndarray], items: Sequence[Any]) -> list[np.ndarray]:
        """``[fn(x) for x in items]``, on the decode threads when there are any."""
        pool = self._threads()
        return list(pool.map(fn, items)) if pool is not None else [fn(x) for x in items]

    def __getstate__(self) -> dict[str, Any]:  # a pool cannot be pickled (spawned workers)
        return {**self.__dict__, "_pool": None}

    def process(self, raw: dict, spec: SourceSpec, size: tuple[int, int],
                rng: np.random.Generator | None) -> dict[str, Any]:
        """One raw sample -> one training example (tensors without the batch dim).

        ``rng=None`` gives the deterministic evaluation view (start 0, stride 1, centre crop,
        no flip). Raises :class:`ShardError`/``_Skip`` on unusable samples.
        """
        header = parse_header(raw)
        sel = self._frames(int(header["num_frames"]), rng)
        clip = decode_sample(raw, frames=sel, validate=True, lazy=True)
        meta = clip["meta"]
        shard, key = raw.get("__url__"), raw.get("__key__")
        if spec.has_pose and not meta["has_pose"]:
            raise ShardError("clip without poses in a pose-annotated corpus", shard=shard,
                             key=key, field="extrinsics")
        box = plan_crop(tuple(meta["image_size"]), size, self.short_side, rng,
                        self.crop_jitter if rng is not None else 0.0)
        # drawn here, where it always was in the rng's sequence (nothing above uses rng after
        # the crop), so that maps are mirrored by their crop indices instead of copied
        flip = rng is not None and self.hflip_prob > 0 and rng.random() < self.hflip_prob
        try:
            video = decode_crop_rgb(clip["rgb"], box, fast=self.fast_decode,
                                    pool=self._threads())
        except Exception as exc:  # PIL raises many types for broken images
            raise ShardError(f"undecodable or mis-sized frame ({exc})", shard=shard, key=key,
                             field="rgb") from exc

        def sized(arr: np.ndarray, field: str) -> np.ndarray:
            if arr.shape != box.src:
                raise ShardError(f"map is {arr.shape} but the clip's image size is {box.src}",
                                 shard=shard, key=key, field=field)
            return crop_nearest(arr, box, mirror=flip)

        dec_mask = _fast_mask if self.fast_decode else _decode_mask
        codec = clip.get("depth_codec", "png16")

        def dec_depth(p: bytes, where: tuple[str, str, str]) -> np.ndarray:
            return decode_depth_bits(p, where, codec, box.src)  # a view: cropped before converting

        bits = np.stack(self._map(lambda p: sized(dec_depth(p, (shard, key, "depth")), "depth")
                                  .astype(np.uint16, copy=False), clip["depth"]))
        if not _finite_non_negative(bits):
            raise ShardError("NaN/inf or negative depth", shard=shard, key=key, field="depth")
        depth = _float16_bits_to_float32(bits)
        masks = {m: np.stack(self._map(lambda p, m=m: sized(dec_mask(p, (shard, key, m)), m),
                                       clip[m])).astype(bool, copy=False)
                 if clip.get(m) is not None else None for m in ("sky", "valid")}
        intr = crop_intrinsics(clip["intrinsics"], box)
        has_pose = clip["extrinsics"] is not None
        extr = clip["extrinsics"] if has_pose else np.tile(np.eye(4, dtype=np.float32),
                                                           (len(sel), 1, 1))
        if flip:  # depth and masks were mirrored by crop_nearest
            video = video.flip(-1)
            intr = flip_intrinsics(intr, size[1])
            extr = flip_extrinsics(extr) if has_pose else extr
        is_disp = meta["depth_kind"] == "relative-disparity"
        depth, ok = self._supervision(depth, masks["sky"], masks["valid"], is_disp, spec)
        return {
            "video": video,  # uint8 (T, 3, h, w); normalised when batched
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)),
            "valid": torch.from_numpy(np.ascontiguousarray(ok)),
            "intrinsics": torch.from_numpy(intr.astype(np.float32)),
            "extrinsics": torch.from_numpy(np.ascontiguousarray(extr, dtype=np.float32)),
            "has_pose": has_pose,
            "is_disparity": is_disp,
            "key": str(key),
        }

    @staticmethod
    def _supervision(depth: np.ndarray, sky: np.ndarray | None, valid: np.ndarray | None,
                     is_disp: bool, spec: SourceSpec) -> tuple[np.ndarray, np.ndarray]:
        """Depth with far/sky truncation and its validity mask (paper A.2)."""
        depth = np.require(depth, requirements=("C", "W"))  # a fresh array already: no copy
        ok = depth > 0
        if not is_disp and spec.max_depth is not None:
            np.minimum(depth, spec.max_depth, out=depth)
        if sky is not None:
            if spec.sky == "far" and (is_disp or spec.max_depth is not None):
                depth[sky] = 0.0 if is_disp else spec.max_depth
                ok |= sky
            else:
                ok &= ~sky
        if valid is not None:
            ok &= valid | (sky if sky is not None and spec.sky == "far" else False)
        return depth, ok

    # ------------------------------------------------------------------ batches
    def _safe_process(self, raw: dict, spec: SourceSpec, size: tuple[int, int],
                      rng: np.random.Generator | None) -> dict | None:
        try:
            return self.process(raw, spec, size, rng)
        except _Skip as exc:
            self._skip(spec, exc.reason, exc)
        except (ShardError, ClipError) as exc:
            if self._on_error(spec) == "raise":
                raise
            field = getattr(exc, "field", None) or "sample"
            self._skip(spec, f"bad_{field.split(':')[0].split('.')[0]}", exc)
        return None

    def _collate(self, examples: list[dict]) -> dict[str, Any]:
        if self.fast_decode:
            return self._collate_fast(examples)
        batch: dict[str, Any] = {k: torch.stack([e[k] for e in examples])
                                 for k in ("depth", "valid", "intrinsics", "extrinsics")}
        video = torch.stack([e["video"] for e in examples]).float()
        batch["video"] = torch.addcmul(_NORM_SHIFT, video, _NORM_SCALE)  # (x/255 - mean) / std
        return self._finish_batch(batch, examples)

    def _finish_batch(self, batch: dict[str, Any], examples: list[dict]) -> dict[str, Any]:
        """The per-clip flags, keys and this batch's skip counts (both collates)."""
        batch["has_pose"] = torch.tensor([e["has_pose"] for e in examples], dtype=torch.bool)
        batch["is_disparity"] = torch.tensor([e["is_disparity"] for e in examples], dtype=torch.bool)
        batch["key"] = [e["key"] for e in examples]
        batch["_skipped"] = dict(self._skips)
        self._skips.clear()
        return batch

    def _collate_fast(self, examples: list[dict]) -> dict[str, Any]:
        """:meth:`_collate` with the same values and fewer passes over memory: video is
        normalised frame by frame straight from the resized uint8 into the float batch (or kept
        uint8 for ``normalize="device"``), and every tensor is stacked straight into shared
        memory in a worker (no copy when it is sent)."""
        batch: dict[str, Any] = {k: _stack([e[k] for e in examples])
                                 for k in ("depth", "valid", "intrinsics", "extrinsics")}
        videos = [e["video"] for e in examples]
        if self.normalize == "device":
            batch["video"] = _stack(videos)  # uint8; VideoDataModule.on_after_batch_transfer
        else:
            out = _empty_shared((len(videos), *videos[0].shape), torch.float32)
            for b, video in enumerate(videos):
                for t, frame in enumerate(video):  # one frame at a time stays in cache
                    torch.addcmul(_NORM_SHIFT, frame, _NORM_SCALE, out=out[b, t])
            batch["video"] = out
        return self._finish_batch(batch, examples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # not a generator: the worker numbering and resume position are read now, when the
        # DataLoader creates the iterator (the loader clears them right after)
        if self._resume is not None and self._resume.get("epoch", self.epoch) != self.epoch:
            self._resume = None  # a persistent worker's copy of a position it already used
        rank, world, worker, nworkers = self._worker_info()
        if torch.utils.data.get_worker_info() is not None:
            reuse_clip_buffers()
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        self._skips = Counter()
        if self.train:
            resume = self._resume["workers"][worker] if self._resume else None
            return self._train_batches(rng, worker, nworkers, resume)
        return self._eval_batches()

    def _train_batches(self, rng: np.random.Generator, worker: int, nworkers: int,
                       resume: dict[str, Any] | None = None) -> Iterator[dict]:
        """This worker's batches of the epoch, from its start or from position ``resume``;
        each carries the worker's position after it (``batch["_state"]``)."""
        per_rank = self.batches_per_rank()
        mine = per_rank // nworkers + (worker < per_rank % nworkers)
        streams = []
        for i, spec in enumerate(self.sources):
            shards, keep = self._my_shards(spec)
            src_rng = np.random.default_rng([self.seed, self.epoch, int(rng.integers(1 << 31)), i])
            streams.append(ResampledSource(
                spec.name, shards, keep, src_rng, self.shuffle_buffer,
                lambda shard, spec=spec: self._shard_samples(spec, shard),
                lambda exc, spec=spec: self._shard_failed(spec, exc)))
        start = 0
        if resume is not None:
            rng.bit_generator.state = resume["rng"]
            for stream, state in zip(streams, resume["sources"], strict=True):
                stream.load_state_dict(state)
            start = int(resume["done"])
        for done in range(start + 1, mine + 1):
            size = self.sizes[int(rng.integers(len(self.sizes)))]
            examples: list[dict] = []
            failures = 0
            while len(examples) < self.batch_size:
                i = int(rng.choice(len(self.sources), p=self._probs))
                example = self._safe_process(next(streams[i]), self.sources[i], size, rng)
                if example is None:
                    failures += 1
                    if failures > _MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"{failures} unusable samples in a row (counts: "
                                           f"{dict(self._skips)}); check the sources")
                    continue
                failures = 0
                examples.append(example)
            batch = self._collate(examples)
            batch[STATE_KEY] = {"worker": worker, "done": done, "rng": rng.bit_generator.state,
                                "sources": [stream.state_dict() for stream in streams]}
            yield batch

    def _eval_batches(self) -> Iterator[dict]:
        examples: list[dict] = []
        for spec in self.sources:
            shards, keep = self._my_shards(spec)
            for raw in self._raw_once(spec, shards, keep):
                example = self._safe_process(raw, spec, self.eval_size, None)
                if example is None:
                    continue
                examples.append(example)
                if len(examples) == self.batch_size:
                    yield self._collate(examples)
                    examples = []
        if examples:
            yield self._collate(examples)


#: The training/evaluation loader: advances epochs, collects skip counts, and (training)
#: records the stream position for Lightning's stateful-dataloader protocol.
_StreamLoader = StatefulStreamLoader


class VideoDataModule(pl.LightningDataModule):
    """Video clips from WebDataset shards for training, validation and testing.

    Args:
        train_sources: ``name -> {path, weight, max_depth, sky, on_error}`` (or ``name -> path``)
            for training; weights default to 1 (uniform over sources, as the paper).
        val_sources: the same for validation (held-out shards); default: the last
            ``holdout_shards`` shards of every training source, if set.
        test_sources: the same for testing.
        predict_sources: the same for ``gemdepth predict`` (default: ``test_sources``, else the
            validation sources); every stored clip whole, one clip per batch.
        holdout_shards: shards per training source kept out of training for validation.
        batch_size: clips per batch (per rank).
        eval_batch_size: clips per validation/test batch (default: ``batch_size``).
        clip_length: frames per training clip (N).
        stride_range: inclusive range of frame strides to draw from.
        short_side: short side after resizing (518 in the paper).
        sizes: crop shapes ``(H, W)``, one drawn per batch (default: the paper's six).
        eval_size: validation/test crop shape (default: the first of ``sizes``).
        crop_jitter: 0 = centre crops, 1 = anywhere along the free axis.
        hflip_prob: probability of a pose-consistent horizontal flip per clip.
        max_depth: default far truncation in metres (per source overridable; paper: 400).
        sky: default sky handling of training sources, ``"far"`` (paper: sky supervised at
            ``max_depth``) or ``"invalid"``.
        eval_sky: default sky handling of validation/test/predict sources and of the hold-out
            shards: ``"invalid"`` (sky is not scored; a source's own ``sky`` still wins).
        samples_per_epoch: clips per training epoch over all ranks (the stream is endless).
        num_workers: DataLoader worker processes (decoding happens there).
        shuffle_buffer: clips in each worker's shuffle buffer.
        seed: base seed of all sampling.
        pin_memory: pin batches for faster host-to-GPU copies (``None``: when CUDA is there).
        persistent_workers: keep the DataLoader worker processes (``num_workers > 0``) alive
            between epochs, so each epoch does not pay for their start, imports and first
            shard reads again (a resumed pass still starts fresh ones that copy its position).
        fast_decode: decode with torchvision's JPEG/PNG decoders straight into tensors and
            collate without temporaries (the same values); ``False`` keeps the PIL path (the
            reference that ``benchmarks/bench_datamodule.py`` compares against).
        normalize: ``"worker"`` (batches carry float32 normalised video) or ``"device"``
            (batches carry uint8 video, 4x less to send and pin; :meth:`on_after_batch_transfer`
            normalises it on the training device, so the model sees the same values).
        decode_threads: threads per loader process decoding a clip's frames in parallel (the
            decoders release the GIL): more frames/s per worker on as many more cores.
        remote_retries: further attempts at a shard URL after a transient failure (connection
            reset, HTTP 5xx, stalled or cut stream), with exponential back-off; then the shard
            is a counted skip (``<source>/unreachable_shard``).
        remote_backoff: seconds before the first retry (doubling, at most 30 s).
        remote_timeout: seconds a connection or read of a URL may stall before it fails.
        storage_options: keyword arguments of fsspec's filesystems per protocol, e.g.
            ``{s3: {anon: true, endpoint_url: ...}, gs: {...}}`` (credentials are better left to
            the storage's environment variables: hyper-parameters are saved in checkpoints).
        remote_cache_dir: a local folder keeping every URL shard once fetched (checked against
            its sha256 when read again), so resampled shards are not downloaded again and an
            outage only hits shards never fetched; nothing is evicted (``None``: no cache).
    """

    def __init__(
        self,
        train_sources: dict[str, dict[str, Any] | str] | None = None,
        val_sources: dict[str, dict[str, Any] | str] | None = None,
        test_sources: dict[str, dict[str, Any] | str] | None = None,
        predict_sources: dict[str, dict[str, Any] | str] | None = None,
        holdout_shards: int = 0,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        clip_length: int = 32,
        stride_range: tuple[int, int] = (1, 2),
        short_side: int = 518,
        sizes: list[tuple[int, int]] | None = None,
        eval_size: tuple[int, int] | None = None,
        crop_jitter: float = 1.0,
        hflip_prob: float = 0.5,
        max_depth: float | None = 400.0,
        sky: str = "far",
        eval_sky: str = "invalid",
        samples_per_epoch: int = 1000,
        num_workers: int = 2,
        shuffle_buffer: int = 8,
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        fast_decode: bool = True,
        normalize: str = "worker",
        decode_threads: int = 1,
        remote_retries: int = 3,
        remote_backoff: float = 1.0,
        remote_timeout: float = 30.0,
        storage_options: dict[str, Any] | None = None,
        remote_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.remote = RemoteOptions(retries=remote_retries, backoff=remote_backoff,
                                    timeout=remote_timeout,
                                    storage_options=dict(storage_options or {}),
                                    cache_dir=remote_cache_dir)
        if clip_length < 1 or batch_size < 1:
            raise ValueError("clip_length and batch_size must be >= 1")
        if not 1 <= stride_range[0] <= stride_range[1]:
            raise ValueError(f"stride_range must be (lo, hi) with 1 <= lo <= hi, got {stride_range}")
        self.sizes = [tuple(int(v) for v in s) for s in (sizes or PAPER_SIZES)]
        for h, w in self.sizes:
            if h > short_side and w > short_side:
                raise ValueError(f"crop {h}x{w} exceeds short_side={short_side} on both axes")
        self.eval_size = tuple(eval_size) if eval_size else self.sizes[0]
        if normalize not in _NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
        if eval_sky not in _SKY_MODES:
            raise ValueError(f"eval_sky must be one of {_SKY_MODES}, got {eval_sky!r}")
        defaults = {"max_depth": max_depth, "sky": sky}
        # scoring sky at max_depth would reward predicting the truncation value: evaluation
        # splits (and the hold-out shards of training corpora) mask sky unless a source says otherwise
        eval_defaults = {"max_depth": max_depth, "sky": eval_sky}
        self._specs = {
            "train": parse_sources(train_sources, defaults),
            "val": parse_sources(val_sources, eval_defaults),
            "test": parse_sources(test_sources, eval_defaults),
            "predict": parse_sources(predict_sources, eval_defaults),
        }
        self._resolved: dict[str, list[SourceSpec]] = {}
        self.skipped: Counter[str] = Counter()
        self._train_epoch = 0
        self._train_loader: _StreamLoader | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Resolve every source's shard list (and the hold-out split)."""
        if self._resolved:
            return
        hp = self.hparams
        train = [_resolve(s, self.remote) for s in self._specs["train"]]
        val = [_resolve(s, self.remote) for s in self._specs["val"]]
        if hp.holdout_shards > 0 and train:
            held = []
            for i, spec in enumerate(train):
                if len(spec.shards) <= hp.holdout_shards:
                    raise ValueError(f"source {spec.name}: holdout_shards={hp.holdout_shards} "
                                     f"leaves none of its {len(spec.shards)} shards for training")
                keep, out = spec.shards[:-hp.holdout_shards], spec.shards[-hp.holdout_shards:]
                train[i] = SourceSpec(**{**spec.__dict__, "shards": keep})
                held.append(SourceSpec(**{**spec.__dict__, "shards": out, "sky": hp.eval_sky}))
            if not val:
                val = held
        test = [_resolve(s, self.remote) for s in self._specs["test"]]
        predict = [_resolve(s, self.remote) for s in self._specs["predict"]] or test or val
        self._resolved = {"train": train, "val": val, "test": test, "predict": predict}

    def _stream(self, split: str) -> ClipStream | None:
        self.setup()
        sources = self._resolved[split]
        if not sources:
            return None
        hp = self.hparams
        if split == "predict":
            batch_size = 1  # whole clips may differ in length; long ones are windowed per clip
        else:
            batch_size = hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size)
        return ClipStream(
            sources, train=split == "train", batch_size=batch_size,
            clip_length=hp.clip_length, stride_range=tuple(hp.stride_range),
            short_side=hp.short_side, sizes=self.sizes, eval_size=self.eval_size,
            crop_jitter=hp.crop_jitter, hflip_prob=hp.hflip_prob,
            samples_per_epoch=hp.samples_per_epoch, seed=hp.seed,
            shuffle_buffer=hp.shuffle_buffer, whole_clips=split == "predict",
            fast_decode=hp.fast_decode, normalize=hp.normalize,
            decode_threads=hp.decode_threads, remote=self.remote)

    def _loader(self, split: str) -> DataLoader | list:
        stream = self._stream(split)
        if stream is None:
            return []
        loader = _StreamLoader(stream, self._count, self._train_epoch if split == "train" else 0,
                               num_workers=self.hparams.num_workers,
                               persistent_workers=(self.hparams.persistent_workers
                                                   and self.hparams.num_workers > 0),
                               pin_memory=(torch.cuda.is_available() if self.hparams.pin_memory
                                           is None else self.hparams.pin_memory))
        if split == "train":
            self._train_loader = loader
        return loader

    def train_dataloader(self) -> DataLoader:
        """Endless, resampled, mixed stream cut into ``samples_per_epoch`` epochs."""
        loader = self._loader("train")
        if not loader:
            raise ValueError("VideoDataModule has no train_sources")
        return loader

    def val_dataloader(self) -> DataLoader | list:
        """One deterministic pass over the held-out shards (``[]`` when there are none)."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """One deterministic pass over the test shards (``[]`` when there are none)."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        """One deterministic pass over the predict sources (default: test, else val): every
        stored clip whole (all its frames), centre-cropped at ``eval_size``, one per batch."""
        return self._loader("predict")

    # ------------------------------------------------------------------ skip counters
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise uint8 video (``normalize="device"``) on the device it was moved to."""
        if isinstance(batch, dict) and isinstance(batch.get("video"), torch.Tensor) \
                and batch["video"].dtype == torch.uint8:
            batch["video"] = normalize_video(batch["video"])
        return batch

    def _count(self, delta: Mapping[str, int]) -> None:
        self.skipped.update(delta)

    @property
    def skipped_total(self) -> int:
        """Samples skipped so far (all sources and reasons): log it as ``data/skipped``."""
        return int(sum(self.skipped.values()))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Training epoch counter of the stream (so a resumed run does not replay epochs)."""
        epoch = self._train_loader.epoch if self._train_loader is not None else self._train_epoch
        return {"train_epoch": epoch, "skipped": dict(self.skipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_epoch = int(state_dict.get("train_epoch", 0))
        self.skipped = Counter(state_dict.get("skipped", {}))
        if self._train_loader is not None:
            self._train_loader.epoch = self._train_epoch
