"""The DPT depth head of Depth Anything V2 (per frame), with hook points for plug-ins.

Module and parameter names follow the official head (``projects``, ``resize_layers``,
``scratch.layerN_rn``, ``scratch.refinenetN.{out_conv,resConfUnit1,resConfUnit2}``,
``scratch.output_conv1``, ``scratch.output_conv2``) so checkpoint adapters only strip a prefix.
One deliberate difference: ``refinenet4`` has no ``resConfUnit1`` (it never gets a skip input,
so the official parameters are dead weight; the adapters account for them by name).

Memory: every stage that treats frames independently runs on slices of frames whose size comes
from the ``max_memory`` budget (:mod:`gemdepth.models.chunking`); only what must see the whole
clip (hooks, VDA's motion modules) sees it. The full-resolution fusion (``refinenet2``,
``refinenet1``) and the output convolutions thus hold a few frames at a time, with the same numbers
as one call on all frames. ``checkpointing=True`` recomputes each stage in backward
(``torch.utils.checkpoint``, non-reentrant) instead of keeping its activations.

Hooks (the paper's Table 7 positions): ``"mid"`` acts on ``path_4``, the fused map at the patch
grid; ``"late"`` on ``path_1``, the last fused map right before ``output_conv1``. Each is a
``Callable[[Tensor (B·T, C, h, w)], Tensor]`` returning the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gemdepth.models.chunking import (
    DEFAULT_MAX_MEMORY,
    map_rows,
    release_between_slices,
    rows_per_chunk,
    tensor_bytes,
)

Hook = Callable[[Tensor], Tensor]
HOOK_NAMES = ("mid", "late")
HEAD_FEATURES_2 = 32  # width of the last hidden conv, hard-coded in Depth Anything
FULL_RESOLUTION_RELEASES = 4  # heap releases spread over the full-resolution stage's slices (see DPTHead._map)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (optionally with BatchNorm after each conv)."""

    def __init__(self, features: int, use_bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn1: nn.Module = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2: nn.Module = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with a skip map, refine, upsample (bilinear, align_corners) and project."""

    def __init__(self, features: int, use_bn: bool = False, has_skip: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)

    def fuse(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """The part before the resampling: ``x (+ resConfUnit1(skip))`` refined by ``resConfUnit2``."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.resConfUnit2(x)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        x = self.fuse(x, skip)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


def bilinear_rows(x: Tensor, size: tuple[int, int], start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of ``F.interpolate(x, size, mode="bilinear", align_corners=True)``.

    Hand-written because ``F.interpolate`` cannot compute a band of its output rows. Separable:
    the input rows the band reads are resampled across by ``F.interpolate`` itself (height kept,
    so that axis is the identity), then each output row blends its two source rows with the
    weights PyTorch derives (source row ``i · (in - 1) / (out - 1)`` in float32), in float32, and
    is rounded to the input's dtype once at the end, as ``F.interpolate`` does.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size
    one = torch.ones((), dtype=torch.float32, device=x.device)
    scale = (one * (in_h - 1)) / (out_h - 1) if out_h > 1 else one * 0
    src = torch.arange(start, stop, dtype=torch.float32, device=x.device) * scale
    h0 = src.floor().long().clamp_(max=in_h - 1)
    lh = (src - h0).clamp_(0, 1)[:, None]
    h1 = (h0 + 1).clamp_(max=in_h - 1)
    # the input rows the band can read (a superset, from Python's arithmetic: no tensor → int sync)
    ratio = (in_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    first = max(0, min(in_h - 1, math.floor(start * ratio) - 1))
    last = min(in_h, math.floor((stop - 1) * ratio) + 3)
    rows = x[..., first:last, :].float()
    across = F.interpolate(rows, size=(last - first, out_w), mode="bilinear", align_corners=True)
    band = across.index_select(-2, h0 - first).mul_(1 - lh)
    band.addcmul_(across.index_select(-2, h1 - first), lh.expand(-1, out_w))
    return band.to(x.dtype)


def _apply(hooks: Mapping[str, Hook] | None, name: str, x: Tensor) -> Tensor:
    if not hooks or name not in hooks:
        return x
    y = hooks[name](x)
    if y.shape != x.shape:
        raise ValueError(f"the {name!r} hook changed the feature map shape {tuple(x.shape)} → {tuple(y.shape)}")
    return y


def _has(hooks: Mapping[str, Hook] | None, name: str) -> bool:
    return bool(hooks) and name in hooks  # type: ignore[operator]


Features = Sequence[tuple[Tensor, Tensor]]


def _take(features: Features, release: bool) -> list[tuple[Tensor, Tensor]]:
    """A list of ``features`` the head may drop entries from; with ``release`` the caller's list is emptied."""
    levels = list(features)
    if release and isinstance(features, list):
        features.clear()
    return levels


class DPTHead(nn.Module):
    """Depth Anything V2's DPT head: 4 token maps → ``(B·T, 1, 14h, 14w)`` (before the final ReLU).

    ``num_frames`` is accepted (and ignored: frames are independent) so a config switches host
    between ``dav2`` and ``vda`` with one edit; ``max_frames`` is ``None`` here. ``max_memory``
    (bytes or ``None``) bounds the working memory of each frame slice; ``checkpointing`` turns on
    activation checkpointing of the stages in training; ``channels_last`` runs the
    full-resolution convolutions in channels-last memory format (on by default: faster on CPU and
    on GPUs with large slices; :func:`gemdepth.models.chunking.tune_for_device` turns it off for small
    GPU slices, where it measured slower).
    """

    max_frames: int | None = None

    def __init__(
        self,
        in_channels: int,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        use_bn: bool = False,
        use_clstoken: bool = False,
        num_frames: int | None = None,
        metric: bool = False,
        max_depth: float | None = None,
    ) -> None:
        super().__init__()
        # metric: the output is depth in metres, not relative disparity (metric VDA: same layers);
        # max_depth: metric DAv2's output, sigmoid · max_depth (its last activation is a Sigmoid).
        self.metric = bool(metric or max_depth is not None)
        self.max_depth = None if max_depth is None else float(max_depth)
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must have 4 entries, got {list(out_channels)}")
        self.in_channels = in_channels
        self.features = features
        self.out_channels = list(out_channels)
        self.use_clstoken = use_clstoken
        self.max_memory: int | None = DEFAULT_MAX_MEMORY
        self.checkpointing = False
        self.channels_last = True  # NHWC convs: faster on CPU (oneDNN) and on CUDA with large slices
        c = list(out_channels)
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, ch, 1) for ch in c])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        if use_clstoken:
            self.readout_projects = nn.ModuleList(
                [nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in c]
            )
        scratch = nn.Module()
        for i, ch in enumerate(c, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
        scratch.refinenet1 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet2 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet3 = FeatureFusionBlock(features, use_bn)
        scratch.refinenet4 = FeatureFusionBlock(features, use_bn, has_skip=False)
        scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_FEATURES_2, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(HEAD_FEATURES_2, 1, 1),
            nn.ReLU(True) if max_depth is None else nn.Sigmoid(),
            nn.Identity(),
        )
        self.scratch = scratch

    # ------------------------------------------------------------------ per-frame pieces
    def project(self, i: int, tokens: Tensor, cls: Tensor, patch_h: int, patch_w: int) -> Tensor:
        """Token map ``i`` ``(N, h·w, C)`` → its projected map ``(N, out_channels[i], h, w)`` (readout
        and 1×1 projection: per token, so it may run as soon as the tokens exist)."""
        if self.use_clstoken:
            readout = cls.unsqueeze(1).expand_as(tokens)
            tokens = self.readout_projects[i](torch.cat([tokens, readout], dim=-1))
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], patch_h, patch_w)
        return self.projects[i](x)

    def level(self, i: int, tokens: Tensor, cls: Tensor, patch_h: int, patch_w: int) -> Tensor:
        """Token map ``i`` → its image-like map (4×, 2×, 1× or ½× the patch grid). ``tokens`` may
        already be :meth:`project`'s output (4-D; the model's inference ``encode`` does that early)."""
        x = tokens if tokens.dim() == 4 else self.project(i, tokens, cls, patch_h, patch_w)
        return self.resize_layers[i](x)

    def reassemble(self, features: Features, patch_h: int, patch_w: int) -> list[Tensor]:
        """Token maps → 4 image-like maps at 4×, 2×, 1× and ½× the patch grid."""
        return [self.level(i, t, c, patch_h, patch_w) for i, (t, c) in enumerate(features)]

    def output(self, path_1: Tensor, patch_h: int, patch_w: int) -> Tensor:
        """Last fused map → one-channel depth at the network's input size (14 px per patch)."""
        return self.upsample_output(self.scratch.output_conv1(path_1), patch_h, patch_w)

    def output_convs(self, x: Tensor) -> Tensor:
        """``output_conv2`` (and the metric scaling) on the upsampled map or a band of its rows."""
        return self.scale_output(self.scratch.output_conv2(x))

    def band_rows(self, x: Tensor, height: int, width: int, channels: int) -> int:
        """Output rows per band of :meth:`resample_in_bands` (all of them without a budget or with
        autograd): a band holds ``channels`` floats per output pixel (resampled map, convs after it)."""
        if self.max_memory is None or torch.is_grad_enabled():
            return height
        per_row = x.shape[0] * width * x.element_size() * channels
        return rows_per_chunk(height, per_row, self.max_memory, min_rows=16)

    def resample_in_bands(self, x: Tensor, size: tuple[int, int], pointwise: Callable[[Tensor], Tensor] | None,
                          convs: Callable[[Tensor], Tensor], halo: int, channels: int) -> Tensor:
        """``convs(pointwise(F.interpolate(x, size, bilinear, align_corners)))``, in bands of output rows.

        At the network's full size the resampled maps are the largest tensors of the head (ViT-L,
        518×686: 119 MB per frame for ``path_1``'s 256 channels at 8× the patch grid, 182 MB for
        the 128 channels at 14×); in inference they exist ``band_rows`` rows at a time, each band
        with the ``halo`` rows its 3×3 convolutions need (zeros beyond the image's own border, as the
        convolutions' padding: the per-pixel ``pointwise`` stage runs before that padding).
        Same numbers as the whole map (bilinear weights as PyTorch's). ``channels`` sizes the bands.
        """
        height, width = size
        band = self.band_rows(x, height, width, channels)
        if band >= height:
            y = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            return convs(y if pointwise is None else pointwise(y))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out: Tensor | None = None
        for start in range(0, height, band):
            stop = min(height, start + band)
            lo, hi = max(0, start - halo), min(height, stop + halo)
            tile = bilinear_rows(x, size, lo, hi).contiguous(memory_format=fmt)
            if pointwise is not None:
                tile = pointwise(tile)
            top, bottom = lo - (start - halo), (stop + halo) - hi  # rows beyond the image's border
            if top or bottom:
                tile = F.pad(tile, (0, 0, top, bottom)).contiguous(memory_format=fmt)
            y = convs(tile)[..., halo:halo + stop - start, :]
            del tile
            if out is None:
                out = torch.empty((*y.shape[:2], height, width), dtype=y.dtype, device=y.device, memory_format=fmt)
            out[..., start:stop, :] = y
        assert out is not None
        return out

    def upsample_output(self, x: Tensor, patch_h: int, patch_w: int) -> Tensor:
        """``output_conv1``'s map → bilinear to the network's input size → :meth:`output_convs`,
        in bands of rows (:meth:`resample_in_bands`; ``output_conv2`` starts with its 3×3 conv)."""
        return self.resample_in_bands(x, (patch_h * 14, patch_w * 14), None, self.output_convs, halo=1,
                                      channels=3 * x.shape[1] + 2 * HEAD_FEATURES_2 + 2)

    def scale_output(self, out: Tensor) -> Tensor:
        """Metric DAv2 heads: sigmoid output → metres (× ``max_depth``); identity otherwise."""
        return out if self.max_depth is None else out * self.max_depth

    def skip_3(self, f3: tuple[Tensor, Tensor], patch_h: int, patch_w: int, frames: int = 1) -> Tensor:
        """Level 3 (index 2) → ``rn3``, its ``features``-wide skip map for ``refinenet3``.

        It depends on that level alone, so when no plug-in reads the level the model computes it
        before the plug-ins run and hands it to :meth:`forward` in the level's place: the clip then
        holds ``features`` channels there instead of ``out_channels[2]`` (ViT-L: 256 vs 1024).
        """
        rows = f3[0].shape[0]
        chunk = self._chunk(rows, patch_h, patch_w, f3[0].dtype, full=False)
        return self._map(lambda t, c: self.scratch.layer3_rn(self.level(2, t, c, patch_h, patch_w)), rows, chunk,
                         *f3)

    def _low(self, f3: tuple[Tensor, Tensor] | Tensor, f4: tuple[Tensor, Tensor], patch_h: int, patch_w: int
             ) -> tuple[Tensor, Tensor]:
        """Levels 3 and 4 → ``(path_4, rn3)`` at the patch grid (``f3`` may be :meth:`skip_3`'s ``rn3``)."""
        s = self.scratch
        rn3 = f3 if isinstance(f3, Tensor) else s.layer3_rn(self.level(2, *f3, patch_h, patch_w))
        path_4 = s.refinenet4(s.layer4_rn(self.level(3, *f4, patch_h, patch_w)), size=(patch_h, patch_w))
        return path_4, rn3

    def _high(self, path_3: Tensor, f1: tuple[Tensor, Tensor], f2: tuple[Tensor, Tensor], patch_h: int,
              patch_w: int, output: bool) -> Tensor:
        """``path_3`` (2× the patch grid) and levels 1, 2 → ``path_1`` or, with ``output``, depth."""
        s = self.scratch
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        path_3 = path_3.contiguous(memory_format=fmt)
        rn2 = s.layer2_rn(self.level(1, *f2, patch_h, patch_w).contiguous(memory_format=fmt))
        path_2 = s.refinenet2(path_3, rn2, size=(4 * patch_h, 4 * patch_w))
        del rn2, path_3
        rn1 = s.layer1_rn(self.level(0, *f1, patch_h, patch_w).contiguous(memory_format=fmt))
        if not output:
            return s.refinenet1(path_2, rn1)
        fused = s.refinenet1.fuse(path_2, rn1)  # at 4× the patch grid
        del rn1, path_2
        # refinenet1's ×2 resampling and out_conv (path_1, the widest map) and output_conv1, in bands
        out = self.resample_in_bands(fused, (8 * patch_h, 8 * patch_w), s.refinenet1.out_conv, s.output_conv1,
                                     halo=1, channels=4 * self.features + self.features // 2)
        del fused
        return self.upsample_output(out, patch_h, patch_w)

    # ------------------------------------------------------------------ memory plan
    def bytes_per_frame(self, patch_h: int, patch_w: int, element_size: int = 4, full: bool = True) -> int:
        """Estimated working memory of one frame in a full-resolution (or a patch-grid) stage.

        Full resolution: ``refinenet1``'s input and output at 8× the patch grid (``F`` channels
        each), ``output_conv1`` and its 14× resampling (``F/2``), and the 32-channel conv there.
        Patch grid: the encoder width, the widest reassembled map (×4 for the ½× level's conv)
        and a few ``F``-wide maps at up to 2× the grid. In inference the 8× and 14× maps run in
        bands of rows (:meth:`resample_in_bands`), so there this is an upper bound.
        """
        hw = patch_h * patch_w
        f = self.features
        if full:
            per_hw = 2 * 64 * f + 64 * f // 2 + 196 * (f // 2) + 196 * 2 * HEAD_FEATURES_2
        else:
            per_hw = self.in_channels + 4 * max(self.out_channels) + 8 * 4 * f
        return int(element_size * hw * per_hw)

    def _chunk(self, rows: int, patch_h: int, patch_w: int, dtype: torch.dtype, full: bool) -> int:
        return rows_per_chunk(rows, self.bytes_per_frame(patch_h, patch_w, dtype.itemsize, full), self.max_memory)

    def _map(self, fn: Callable[..., Any], rows: int, chunk: int, *args: Any, releases: int = 1) -> Any:
        """:func:`map_rows`, each slice under activation checkpointing when enabled and training.

        In a large CPU inference window the first slice starts by handing the heap's free pages back
        (:func:`~gemdepth.models.chunking.release_between_slices`): the last stage's temporaries leave
        holes this stage's sizes do not fit (a few ms; later slices reuse the first one's holes). A
        stage whose slices run several sub-stages of their own (the full-resolution one) fragments
        the heap a little more with every slice: ``releases`` spreads that many releases over its
        slices (each costs the page faults of refilling what it gave back)."""
        if self.checkpointing and torch.is_grad_enabled():
            inner = fn

            def fn(*a: Any) -> Any:
                return checkpoint(inner, *a, use_reentrant=False)

        elif not torch.is_grad_enabled():
            first = next((a for a in args if isinstance(a, Tensor)), None)
            if first is not None and first.device.type == "cpu":
                slices = -(-rows // max(1, chunk))
                every = -(-slices // max(1, releases))
                work, total, index = fn, tensor_bytes(*args), iter(range(slices))

                def fn(*a: Any) -> Any:
                    i = next(index, None)
                    if i is not None and i % every == 0:
                        release_between_slices(first, chunk < rows, self.max_memory, total)
                    return work(*a)

        return map_rows(fn, rows, chunk, *args)

    def _whole(self, module: nn.Module, x: Tensor, frames: int) -> Tensor:
        """A whole-clip module (motion module), checkpointed when enabled and training."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, frames, use_reentrant=False)
        return module(x, frames)

    def _finish(self, path_3: Tensor, features: Features, patch_h: int, patch_w: int,
                hooks: Mapping[str, Hook] | None) -> Tensor:
        """``path_3`` → depth, frame slices at full resolution (whole clip for a ``late`` hook)."""
        rows = path_3.shape[0]
        chunk = self._chunk(rows, patch_h, patch_w, path_3.dtype, full=True)
        late = _has(hooks, "late")
        out = self._map(self._high, rows, chunk, path_3, features[0], features[1], patch_h, patch_w, not late,
                        releases=FULL_RESOLUTION_RELEASES)
        if not late:
            return out
        path_1 = _apply(hooks, "late", out)
        del out
        return self._map(self.output, rows, chunk, path_1, patch_h, patch_w)

    def forward(
        self,
        features: Features,
        patch_h: int,
        patch_w: int,
        frames: int = 1,
        hooks: Mapping[str, Hook] | None = None,
        release: bool = False,
    ) -> Tensor:
        """``features``: 4 × ``(tokens (B·T, h·w, C), cls (B·T, C))`` → ``(B·T, 1, 14h, 14w)``.

        Any level's tokens may come as :meth:`project`'s map, and level 3 (index 2) as
        :meth:`skip_3`'s ``rn3`` (a bare tensor instead of the pair): what the model's inference
        path computes early for the levels no plug-in reads.
        ``release=True`` hands ``features`` over: the list is emptied and each level is dropped
        as soon as the head is done with it (levels 3 and 4 before the full-resolution stages),
        so a caller that keeps no other reference gets that memory back early.
        """
        features = _take(features, release)
        rows = features[0][0].shape[0]
        dtype = features[0][0].dtype
        s = self.scratch
        size_3 = (2 * patch_h, 2 * patch_w)
        if not _has(hooks, "mid") and not _has(hooks, "late"):
            chunk = self._chunk(rows, patch_h, patch_w, dtype, full=True)
            return self._map(self._all, rows, chunk, features, patch_h, patch_w, releases=FULL_RESOLUTION_RELEASES)
        low = self._chunk(rows, patch_h, patch_w, dtype, full=False)
        path_4, rn3 = self._map(self._low, rows, low, features[2], features[3], patch_h, patch_w)
        if release:
            features[2] = features[3] = None  # type: ignore[index]  # done with levels 3 and 4
        path_4 = _apply(hooks, "mid", path_4)
        path_3 = self._map(lambda p, r: s.refinenet3(p, r, size=size_3), rows, low, path_4, rn3)
        del path_4, rn3
        return self._finish(path_3, features, patch_h, patch_w, hooks)

    def _all(self, features: Features, patch_h: int, patch_w: int) -> Tensor:
        """The whole head on a slice of frames (no hooks)."""
        path_4, rn3 = self._low(features[2], features[3], patch_h, patch_w)
        path_3 = self.scratch.refinenet3(path_4, rn3, size=(2 * patch_h, 2 * patch_w))
        del path_4, rn3
        return self._high(path_3, features[0], features[1], patch_h, patch_w, True)
