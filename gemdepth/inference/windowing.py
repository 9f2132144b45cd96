"""Streaming long-video inference: the official windowing, one window in memory at a time.

The algorithm is the official ``infer_video_depth`` / ``infer_video_geometry`` (GemDepth, after
Video Depth Anything), by default with its constants:

* windows of ``window`` = 32 frames, stride ``window - overlap`` = 22; window ``k`` starts at
  video frame ``22k`` and runs while ``22k`` < number of frames;
* slots ``0..overlap-1`` of every window after the first are the previous window's *inputs*
  at ``keyframes`` = [0, 12, 24, …, 31]: slot 0 is always video frame 0 (a global anchor),
  slots ``align..overlap-1`` (``align = overlap - interp`` = 2) are the previous window's last
  ``interp`` frames; the remaining slots are new frames. Missing frames at the end are copies
  of the last frame;
* each window's depth is resized to the frame size, then fitted to the reference pair by least
  squares ``(scale, shift)`` in disparity space on slots ``0..align-1`` (all pixels),
  ``depth·scale + shift`` clamped at 0; the reference pair is window 0's raw slot-0 depth and
  the previous window's aligned depth at ``keyframes[1]``;
* the previous window's last ``interp`` aligned frames are cross-faded linearly into the new
  window's slots ``align..overlap-1`` (weight 0 → 1 on the new window).

Unlike the official code, which reads the whole video, runs every window and aligns at the
end, this module streams: frames are pulled from an iterator as each window needs them, and a
frame's result is yielded as soon as no later window can change it. Between windows it keeps
only the ``overlap`` key frames (their encoder outputs, or their network inputs for models
without ``encode``/``decode``), the ``align`` reference maps, the ``interp`` pending (not yet
cross-faded) maps with their frames, and the new frames of the next window, so host and device
memory are bounded by one window whatever the video length.

Every frame goes through the encoder once: the official code re-encodes the ``overlap`` carried
frames in every window (32 encoder passes per 22 new frames, 1.68 per output frame on 76
frames); the encoder is per-frame, so their outputs are kept from the window that computed them
and only what mixes frames (GEM, ASTT, the temporal head: ``decode``) runs on the whole window.
The output is the same (the encoder sees the same frames, in batches of other sizes).

Cameras (models with GEM): per-frame extrinsics and intrinsics (intrinsics rescaled to the
frame size as the official ``infer_video_geometry``), taken from the newest window that holds
the frame, like the official. By default each window's poses are chained onto the previous
ones by a similarity on the shared key frames (see :mod:`gemdepth.inference.trajectory`);
``chain_cameras=False`` gives the official per-window poses unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gemdepth.geometry import fit_scale_shift
from gemdepth.inference.preprocess import frames_per_chunk, network_size, preprocess_frames, upsample_depth
from gemdepth.inference.readers import MAX_SOURCE_SIDE, resize_max_side
from gemdepth.inference.trajectory import Similarity, apply_similarity, fit_window_similarity

__all__ = [
    "OFFICIAL_KEYFRAMES",
    "EncoderCache",
    "WindowConfig",
    "FrameResult",
    "WindowInfo",
    "default_keyframes",
    "has_split_api",
    "infer_video",
    "VideoInference",
]

log = logging.getLogger(__name__)

OFFICIAL_KEYFRAMES = (0, 12, 24, 25, 26, 27, 28, 29, 30, 31)


def default_keyframes(window: int, overlap: int, interp: int) -> tuple[int, ...]:
    """Key-frame slots carried from one window to the next.

    Frame 0 (the global anchor), ``overlap - interp - 1`` slots spread evenly over the window
    before the cross-fade region, then the last ``interp`` slots. For the official settings
    (32, 10, 8) this is the official list [0, 12, 24, …, 31].
    """
    align = overlap - interp
    middle = [int(round(j * (window - interp) / align)) for j in range(1, align)]
    return (0, *middle, *range(window - interp, window))


@dataclass(frozen=True)
class WindowConfig:
    """Window length, overlap, carried key frames and cross-fade length (official defaults)."""

    window: int = 32
    overlap: int = 10
    keyframes: tuple[int, ...] | None = None
    interp: int = 8

    def __post_init__(self) -> None:
        w, ov, it = self.window, self.overlap, self.interp
        if w < 2:
            raise ValueError(f"window must be at least 2 frames, got {w}")
        if not 0 < ov < w:
            raise ValueError(f"overlap must be in 1..window-1 = 1..{w - 1}, got {ov}")
        if it < 2 or it > ov - 1:
            raise ValueError(
                f"interp (cross-fade length) must be in 2..overlap-1 = 2..{ov - 1}, got {it}: "
                f"the first overlap - interp key frames are used to fit the alignment"
            )
        if it > w - ov:
            raise ValueError(f"interp {it} must not exceed the stride window - overlap = {w - ov}")
        kf = default_keyframes(w, ov, it) if self.keyframes is None else tuple(int(k) for k in self.keyframes)
        align = ov - it
        if len(kf) != ov:
            raise ValueError(f"keyframes must list overlap = {ov} slots, got {len(kf)}: {list(kf)}")
        if any(not 0 <= k < w for k in kf):
            raise ValueError(f"keyframes must be slots in 0..{w - 1}, got {list(kf)}")
        if kf[0] != 0:
            raise ValueError(f"keyframes[0] must be 0 (frame 0 is the global anchor), got {list(kf)}")
        if list(kf[align:]) != list(range(w - it, w)):
            raise ValueError(
                f"the last interp = {it} keyframes must be the window's last slots "
                f"{list(range(w - it, w))} (they are cross-faded), got {list(kf[align:])}"
            )
        object.__setattr__(self, "keyframes", kf)

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    @property
    def align(self) -> int:
        """Number of leading slots the (scale, shift) fit uses."""
        return self.overlap - self.interp


@dataclass
class FrameResult:
    """One frame's result.

    ``depth``: float32 ``(H, W)`` relative disparity (aligned across windows, ≥ 0) at the frame
    size. ``image``: the uint8 ``(H, W, 3)`` frame it belongs to (after ``max_resolution``).
    ``extrinsics`` ``(4, 4)`` world-to-camera (OpenCV) and ``intrinsics`` ``(3, 3)`` in pixels
    of the frame, when the model predicts cameras. ``window``: the window that produced it.
    """

    index: int
    depth: np.ndarray
    image: np.ndarray | None = None
    extrinsics: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    window: int = 0


@dataclass
class WindowInfo:
    """What one window did (passed to ``on_window``): its slots' video frames (padding shows
    as the last frame's index), the fitted ``(scale, shift)`` (1, 0 for window 0), the network
    input size and, with chained cameras, the similarity that mapped its poses."""

    index: int
    start: int
    slot_frames: list[int]
    scale: float
    shift: float
    input_hw: tuple[int, int]
    camera_similarity: Similarity | None = None


def check_frame(frame: object, index: int, max_resolution: int | None) -> np.ndarray:
    """One input frame as a uint8 ``(H, W, 3)`` RGB array (a tensor is converted), resized so its
    longer side is at most ``max_resolution``; a clear error naming the frame otherwise.
    Shared by the offline windowing and the online stream."""
    if hasattr(frame, "numpy") and not isinstance(frame, np.ndarray):  # a torch tensor
        frame = frame.detach().cpu().numpy()  # type: ignore[union-attr]
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame {index}: expected a numpy uint8 (H, W, 3) RGB array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(
            f"frame {index}: dtype {frame.dtype}, expected uint8 RGB "
            f"(convert with np.clip(x, 0, 255).astype(np.uint8))"
        )
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: shape {frame.shape}, expected (H, W, 3) RGB")
    h, w = frame.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_SOURCE_SIDE:
        raise ValueError(f"frame {index}: size {h}x{w} is out of range (1..{MAX_SOURCE_SIDE} px per side)")
    if max_resolution is not None and max(h, w) > max_resolution:
        frame = resize_max_side(frame, max_resolution)
    return frame


class _FrameFeed:
    """Pulls frames from an iterator on demand, checks them, and holds them until released."""

    def __init__(self, frames: Iterable[np.ndarray], max_resolution: int | None) -> None:
        self._it = iter(frames)
        self._max_res = max_resolution
        self.frames: dict[int, np.ndarray] = {}
        self.count = 0  # frames read so far
        self.exhausted = False
        self.shape: tuple[int, int] | None = None

    def _check(self, frame: object, index: int) -> np.ndarray:
        frame = check_frame(frame, index, self._max_res)
        if self.shape is None:
            self.shape = frame.shape[:2]
        elif frame.shape[:2] != self.shape:
            raise ValueError(
                f"frame {index}: size {frame.shape[0]}x{frame.shape[1]} differs from the first frame's "
                f"{self.shape[0]}x{self.shape[1]}; all frames of a video must have one size"
            )
        return frame

    def has(self, index: int) -> bool:
        """Read up to ``index``; whether that frame exists."""
        while self.count <= index and not self.exhausted:
            try:
                frame = next(self._it)
            except StopIteration:
                self.exhausted = True
                break
            self.frames[self.count] = self._check(frame, self.count)
            self.count += 1
        return index < self.count

    def release(self, index: int) -> None:
        self.frames.pop(index, None)


def _call_model(model: nn.Module, video: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    out = model(video)
    return _unpack(out)


def _unpack(out: object) -> tuple[Tensor, Tensor | None, Tensor | None]:
    if isinstance(out, (tuple, list)):  # the official (depth, pose_enc, extrinsics, intrinsics)
        depth, extr, intr = out[0], (out[2] if len(out) > 2 else None), (out[3] if len(out) > 3 else None)
    else:
        depth = out.depth  # type: ignore[attr-defined]
        extr, intr = getattr(out, "extrinsics", None), getattr(out, "intrinsics", None)
    return depth, extr, intr


def has_split_api(model: nn.Module) -> bool:
    """Whether ``model`` has ``encode(video)`` / ``decode(encoded, B, T, H, W)`` (a per-frame
    encoder whose outputs can be cached across windows), as :class:`~gemdepth.models.VideoDepthModel`."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))


Encoded = list[tuple[Tensor, Tensor]]


class EncoderCache:
    """Per-frame encoder outputs (4 × ``(tokens, cls)`` rows), keyed by video frame index.

    Rows stay in the chunks they were computed in until :meth:`gather` assembles a window in
    slot order (one copy; a frame may fill several slots, e.g. the end-of-video padding) and
    :meth:`retain` keeps only the frames a later window can still need, so the cache holds at
    most ``overlap`` frames between windows.
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[list[int], Encoded]] = []

    @property
    def frames(self) -> list[int]:
        """Frame indices held, in storage order."""
        return [i for ids, _ in self._chunks for i in ids]

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self._chunks)

    def add(self, ids: Sequence[int], encoded: Encoded) -> None:
        """Store the encoder outputs of frames ``ids`` (row ``r`` of every tensor is ``ids[r]``)."""
        rows = {int(t.shape[0]) for pair in encoded for t in pair}
        if rows != {len(ids)}:
            raise ValueError(f"encoder outputs have {sorted(rows)} rows for {len(ids)} frame indices")
        self._chunks.append((list(ids), encoded))

    def gather(self, ids: Sequence[int]) -> Encoded:
        """The outputs of frames ``ids`` stacked in that order (a ``KeyError`` names missing frames)."""
        where: dict[int, tuple[int, int]] = {}
        for c, (chunk_ids, _) in enumerate(self._chunks):
            where.update({i: (c, row) for row, i in enumerate(chunk_ids)})
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"frames {missing} are not in the encoder cache (it holds {sorted(where)})")
        runs: list[tuple[int, list[int]]] = []  # consecutive slots read from one chunk: one index_select
        for i in ids:
            c, row = where[i]
            if runs and runs[-1][0] == c:
                runs[-1][1].append(row)
            else:
                runs.append((c, [row]))
        out: Encoded = []
        for m in range(len(self._chunks[0][1])):
            parts: list[tuple[Tensor, Tensor]] = []
            for c, rows in runs:
                tokens, cls = self._chunks[c][1][m]
                index = torch.tensor(rows, device=tokens.device)
                parts.append((tokens.index_select(0, index), cls.index_select(0, index)))
            if len(parts) == 1:
                out.append(parts[0])
            else:
                out.append((torch.cat([t for t, _ in parts]), torch.cat([c for _, c in parts])))
        return out

    def retain(self, ids: Sequence[int]) -> None:
        """Keep only frames ``ids`` (each once), as one compact chunk; free everything else."""
        keep = list(dict.fromkeys(ids))
        kept = self.gather(keep) if keep else []
        self._chunks = [(keep, kept)] if keep else []


class VideoInference:
    """Runs a model over a frame stream with the official windowing (see the module docstring).

    Use :func:`infer_video` unless you need the object (e.g. to pass ``chunk_bytes``).

    With a model that has ``encode``/``decode`` (:func:`has_split_api`) and ``cache_encoder``
    (the default), every frame goes through the encoder once: the carried key frames' encoder
    outputs are kept from the window that computed them (:class:`EncoderCache`), and only
    ``decode`` (plug-ins, temporal head) runs on the whole window. New frames are encoded in
    chunks of ``encoder_batch`` frames (per-frame work, so this bounds the encoder's memory
    without changing its output). Other models run whole windows through ``model(video)``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: int = 518,
        config: WindowConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_resolution: int | None = None,
        chain_cameras: bool = True,
        on_window: Callable[[WindowInfo], None] | None = None,
        chunk_bytes: int = 1 << 26,
        cache_encoder: bool = True,
        encoder_batch: int | None = None,
    ) -> None:
        self.model = model
        self.chunk_bytes = int(chunk_bytes)  # float32 maps at frame size handled at once
        self.config = config or WindowConfig()
        if input_size < 14:
            raise ValueError(f"input_size must be at least 14 px, got {input_size}")
        self.input_size = int(input_size)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        if max_resolution is not None and max_resolution < 14:
            raise ValueError(f"max_resolution must be at least 14 px, got {max_resolution}")
        self.max_resolution = max_resolution
        self.chain_cameras = chain_cameras
        self.metric = bool(getattr(model, "is_metric", False))  # depth in metres: windows are not re-fitted
        self.on_window = on_window
        self.cache_encoder = bool(cache_encoder) and has_split_api(model)
        if encoder_batch is not None and encoder_batch < 1:
            raise ValueError(f"encoder_batch must be at least 1 frame, got {encoder_batch}")
        self.encoder_batch = encoder_batch or self.config.window
        limit = getattr(model, "max_frames", None)
        if isinstance(limit, int) and limit < self.config.window:
            raise ValueError(
                f"the model takes at most {limit} frames per clip but the window is {self.config.window}; "
                f"pass window={limit} (and a smaller overlap) or use a model built for longer clips"
            )
        if getattr(model, "training", False):
            log.warning("the model is in training mode; call model.eval() for deterministic inference")

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _finish(
        self, out: object, frames: int, net_hw: tuple[int, int], frame_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Depth ``(T, h, w)`` at network size (float32) and cameras (intrinsics rescaled to frame
        pixels, as the official ``infer_video_geometry``) of one window's model output."""
        depth, extr, intr = _unpack(out)
        if depth.dim() != 4 or depth.shape[1] != frames:
            raise ValueError(f"the model returned depth of shape {tuple(depth.shape)}; expected (1, {frames}, h, w)")
        depth = depth[0].to(torch.float32)
        if extr is None or intr is None:
            return depth, None, None
        h, w = net_hw
        intr = intr[0].to(torch.float32).clone()
        intr[..., 0, :] *= frame_hw[1] / w
        intr[..., 1, :] *= frame_hw[0] / h
        return depth, extr[0].to(torch.float32), intr

    def _predict(self, inputs: Tensor, frame_hw: tuple[int, int]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One window's inputs ``(T, 3, h, w)`` through ``model(video)`` (models without the split API)."""
        with torch.inference_mode(), self._autocast():
            out = self.model(inputs[None])
        return self._finish(out, inputs.shape[0], tuple(inputs.shape[-2:]), frame_hw)  # type: ignore[arg-type]

    def _encode_new(self, feed: _FrameFeed, ids: list[int], net_hw: tuple[int, int], cache: EncoderCache) -> None:
        """Preprocess and encode frames ``ids`` in chunks of ``encoder_batch``; store them in ``cache``."""
        for a in range(0, len(ids), self.encoder_batch):
            part = ids[a : a + self.encoder_batch]
            batch = torch.from_numpy(np.stack([feed.frames[i] for i in part])).to(self.device)
            x = preprocess_frames(batch, net_hw, self.chunk_bytes)
            del batch
            with torch.inference_mode(), self._autocast():
                cache.add(part, self.model.encode(x[None]))  # type: ignore[operator]

    def _decode(
        self, encoded: Encoded, frames: int, net_hw: tuple[int, int], frame_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        with torch.inference_mode(), self._autocast():
            out = self.model.decode(encoded, 1, frames, *net_hw, release=True)  # type: ignore[operator]
        return self._finish(out, frames, net_hw, frame_hw)

    # ------------------------------------------------------------------ main loop
    def run(self, frames: Iterable[np.ndarray]) -> Iterator[FrameResult]:
        """Yield a :class:`FrameResult` per input frame, in order, as soon as it is final.

        Per window: preprocess the new frames, run the model, fit (scale, shift) on the first
        ``align`` slots, then upsample, align and emit the remaining slots in chunks that fit a
        fixed memory budget (so 4K frames never need a whole window of float maps at once).
        All tensor work runs under ``torch.inference_mode`` (never across a ``yield``).
        """
        cfg = self.config
        W, OV, IL, A, KF, S = cfg.window, cfg.overlap, cfg.interp, cfg.align, list(cfg.keyframes), cfg.stride
        feed = _FrameFeed(frames, self.max_resolution)
        if not feed.has(0):
            raise ValueError("the video has no frames")
        frame_hw = feed.shape
        assert frame_hw is not None
        net_hw = network_size(frame_hw[0], frame_hw[1], self.input_size)
        chunk = frames_per_chunk(*frame_hw, self.chunk_bytes)
        cross = torch.tensor([0.0] + [i * (1.0 / (IL - 1)) for i in range(1, IL - 1)] + [1.0], dtype=torch.float32)
        cross = cross.to(self.device)

        cache = EncoderCache()  # cached path: encoder outputs of the carried key frames
        key_inputs: Tensor | None = None  # plain path: (OV, 3, h, w) previous window's inputs at KF
        key_ids: list[int] = []
        ref: Tensor | None = None  # (A, H, W) alignment references
        pending: Tensor | None = None  # (I, H, W) previous window's last aligned maps
        key_cams: Tensor | None = None  # (OV, 4, 4) chained extrinsics at KF (float64, CPU)
        last_input: Tensor | None = None  # network input of the latest real frame
        k, start = 0, 0
        while True:
            first_new = 0 if k == 0 else OV
            ids = [start + j for j in range(first_new, W)]
            real = [i for i in ids if feed.has(i)]
            last_real = feed.count - 1 if feed.exhausted else None
            # padding slots (past the end) repeat the last frame, so they carry its index
            slot_ids = ([] if k == 0 else key_ids) + [i if last_real is None else min(i, last_real) for i in ids]
            if self.cache_encoder:
                self._encode_new(feed, real, net_hw, cache)
                with torch.inference_mode():
                    encoded = cache.gather(slot_ids)
                    # every later window reads its carried slots from this window's key slots;
                    # slot W-1 is one of them, so the last frame (for padding) stays too
                    cache.retain([slot_ids[j] for j in KF])
                depth_net, extr, intr = self._decode(encoded, W, net_hw, frame_hw)
                del encoded
            else:
                with torch.inference_mode():
                    if real:
                        batch = np.stack([feed.frames[i] for i in real])
                        x = preprocess_frames(torch.from_numpy(batch).to(self.device), net_hw, self.chunk_bytes)
                        last_input = x[-1:]
                        del batch
                    else:
                        x = torch.empty((0, 3, *net_hw), device=self.device)
                    assert last_input is not None
                    if len(real) < len(ids):
                        x = torch.cat([x, last_input.expand(len(ids) - len(real), -1, -1, -1)])
                    inputs = x if k == 0 else torch.cat([key_inputs, x])  # type: ignore[list-item]
                    del x
                depth_net, extr, intr = self._predict(inputs, frame_hw)
                key_inputs = inputs[KF]
                del inputs

            with torch.inference_mode():
                head = upsample_depth(depth_net[:A], frame_hw)  # the slots the alignment is fitted on
                if k == 0:
                    scale, shift = 1.0, 0.0
                    ref_next = [head[0]]  # window 0's raw slot 0: the global anchor, kept for ever
                elif self.metric:  # metric depth is not rescaled (official metric VDA: scale 1, shift 0)
                    scale, shift = 1.0, 0.0
                    ref_next = [ref[0]]  # type: ignore[index]
                else:
                    assert ref is not None
                    s, b = fit_scale_shift(head.to(torch.float64), ref.to(torch.float64))
                    scale, shift = float(s.to(torch.float32)), float(b.to(torch.float32))
                    ref_next = [ref[0]]
                    if scale == 0.0:  # fit_scale_shift's degenerate case: a constant map cannot be scaled
                        log.warning(
                            "window %d (from frame %d): the depth of its alignment frames is constant, so no "
                            "(scale, shift) fits; scale 0 is used and the window's depth is a constant %.4g",
                            k, start, shift,
                        )
                del head

                sim: Similarity | None = None
                cams = intr_cpu = None
                if extr is not None:
                    cams = extr.detach().cpu().to(torch.float64)
                    if k > 0 and self.chain_cameras and key_cams is not None:
                        sim = fit_window_similarity(cams[:OV], key_cams)
                        cams = apply_similarity(sim, cams)
                    intr_cpu = intr.detach().cpu()  # type: ignore[union-attr]

            has_next = feed.has(start + S)
            end = W - IL if has_next else W  # slots end..W-1 wait for the next window's cross-fade
            pending_next: list[Tensor] = []
            self._emit_info(WindowInfo(k, start, slot_ids, scale, shift, net_hw, sim))

            first_slot = 0 if k == 0 else A
            for a in range(first_slot, W, chunk):
                slots = range(a, min(a + chunk, W))
                with torch.inference_mode():
                    maps = upsample_depth(depth_net[slots.start : slots.stop], frame_hw)
                    if k > 0:
                        maps = (maps * scale + shift).clamp_min_(0.0)
                    for row, slot in enumerate(slots):
                        if slot in KF[1:A]:
                            ref_next.append(maps[row].clone())
                        if slot >= end:
                            pending_next.append(maps[row].clone())
                        elif k > 0 and slot < OV:  # cross-fade with the previous window's tail
                            j = slot - A
                            maps[row] = pending[j] * (1.0 - cross[j]) + maps[row] * cross[j]  # type: ignore[index]
                    out = maps[: max(0, min(end, slots.stop) - slots.start)].to("cpu", torch.float32)
                    del maps
                    results = []
                    for row in range(out.shape[0]):
                        slot = slots.start + row
                        index = start + slot
                        if not feed.has(index):
                            break
                        results.append(
                            FrameResult(
                                index=index,
                                depth=out[row].numpy().copy(),
                                image=feed.frames[index],
                                extrinsics=None if cams is None else cams[slot].to(torch.float32).numpy().copy(),
                                intrinsics=None if intr_cpu is None else intr_cpu[slot].numpy().copy(),
                                window=k,
                            )
                        )
                    del out
                for result in results:  # outside inference_mode: the consumer's code runs between yields
                    feed.release(result.index)
                    yield result
                del results

            if not has_next:
                return
            key_ids = [slot_ids[j] for j in KF]
            with torch.inference_mode():
                ref = torch.stack(ref_next)
                pending = torch.stack(pending_next)
            if cams is not None:
                key_cams = cams[KF]
            del depth_net, ref_next, pending_next
            k += 1
            start += S

    def _emit_info(self, info: WindowInfo) -> None:
        if self.on_window is not None:
            self.on_window(info)


def infer_video(
    model: nn.Module,
    frames: Iterable[np.ndarray],
    *,
    input_size: int = 518,
    window: int = 32,
    overlap: int = 10,
    keyframes: Sequence[int] | None = None,
    interp: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_resolution: int | None = None,
    chain_cameras: bool = True,
    on_window: Callable[[WindowInfo], None] | None = None,
    cache_encoder: bool = True,
    encoder_batch: int | None = None,
) -> Iterator[FrameResult]:
    """Depth (and cameras) of a video, streamed frame by frame with the official windowing.

    ``frames``: any iterable of uint8 ``(H, W, 3)`` RGB arrays (a list, a reader from
    :mod:`gemdepth.inference.readers`, a generator); it is consumed lazily. ``device`` defaults
    to the model's; ``dtype`` float16/bfloat16 runs the model under autocast. ``max_resolution``
    downsizes larger frames (longest side) first; results are at the (downsized) frame size.
    ``cache_encoder`` (models with ``encode``/``decode``) runs every frame through the encoder
    once, keeping the carried key frames' encoder outputs (same output as re-encoding them);
    ``encoder_batch`` caps the frames encoded at once (default: a window's new frames).
    Raises ``ValueError`` for bad settings immediately, and for bad frames when they are read.
    """
    config = WindowConfig(window, overlap, None if keyframes is None else tuple(keyframes), interp)
    runner = VideoInference(
        model,
        input_size=input_size,
        config=config,
        device=device,
        dtype=dtype,
        max_resolution=max_resolution,
        chain_cameras=chain_cameras,
        on_window=on_window,
        cache_encoder=cache_encoder,
        encoder_batch=encoder_batch,
    )
    return runner.run(frames)
