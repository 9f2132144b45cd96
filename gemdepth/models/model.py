"""The video depth model (encoder → early plug-ins → head with mid/late hooks) and its builder.

A model config is a plain dict (or YAML)::

    host: vda                      # or dav2
    encoder: vitl                  # vits|vitb|vitl|vitg or {embed_dim, depth, num_heads, mlp_ratio, layer_idx}
    head: {features: 256, out_channels: [256, 512, 1024, 1024], num_frames: 32, use_bn: false, use_clstoken: false}
    plugins: [{name: gem}, {name: astt}]
    checkpointing: [encoder, plugins, head]   # optional: activation checkpointing per part (training)

:func:`normalize_config` checks it and fills the defaults; :func:`build_model` builds from it.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gemdepth.models.hosts as _hosts  # noqa: F401  (registers the hosts)
from gemdepth.models.chunking import (
    map_rows,
    normalize_checkpointing,
    release_free_heap,
    set_checkpointing,
    set_max_memory,
)
from gemdepth.models.cpu_linear import use_cpu_linear
from gemdepth.models.encoder import PATCH_SIZE, DinoV2Encoder, resolve_encoder_spec
from gemdepth.models.hosts import COMMON_HEAD_DEFAULTS, HEAD_DEFAULTS, HEAD_KEYS
from gemdepth.models.plugins.base import PLUGIN_POSITIONS, PlugIn
from gemdepth.models.registry import HOSTS, PLUGINS
from gemdepth.models.types import DepthOutput, VideoFeatures

log = logging.getLogger(__name__)

CONFIG_KEYS = ("host", "encoder", "head", "plugins", "checkpointing")
OUTPUT_EXTRAS = ("pose_enc", "extrinsics", "intrinsics")
_PLUGIN_MODULES = ("gemdepth.models.plugins.gem", "gemdepth.models.plugins.astt")


def register_plugins() -> None:
    """Import the plug-in package and its modules so ``gem``/``astt`` are in :data:`PLUGINS`.

    A plug-in module that does not exist yet is skipped; any other import error is raised.
    """
    importlib.import_module("gemdepth.models.plugins")
    for name in _PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model config and return it complete (defaults filled), as plain Python types."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a model config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; allowed: {list(CONFIG_KEYS)}")
    for key in ("host", "encoder"):
        if key not in config:
            raise ValueError(f"model config needs {key!r} (keys: {list(CONFIG_KEYS)})")
    host = config["host"]
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known: {', '.join(HOSTS.names())}")

    encoder = config["encoder"]
    spec = resolve_encoder_spec(encoder)
    encoder_out: Any = encoder if isinstance(encoder, str) else spec.to_dict()

    head_in = dict(config.get("head") or {})
    unknown = sorted(set(head_in) - set(HEAD_KEYS))
    if unknown:
        raise ValueError(f"unknown head keys {unknown}; allowed: {list(HEAD_KEYS)}")
    head = dict(COMMON_HEAD_DEFAULTS)
    if isinstance(encoder, str):
        head.update(copy.deepcopy(HEAD_DEFAULTS[encoder]))
    head.update(head_in)
    for key in ("features", "out_channels"):
        if key not in head:
            raise ValueError(f"head.{key} is required with a custom encoder dict")
    head["features"] = int(head["features"])
    head["out_channels"] = [int(c) for c in head["out_channels"]]
    if len(head["out_channels"]) != 4:
        raise ValueError(f"head.out_channels must have 4 entries, got {head['out_channels']}")
    head["num_frames"] = int(head["num_frames"])
    head["use_bn"] = bool(head["use_bn"])
    head["use_clstoken"] = bool(head["use_clstoken"])
    if head.get("max_depth") is not None:
        head["max_depth"] = float(head["max_depth"])
        if not head["max_depth"] > 0:
            raise ValueError(f"head.max_depth must be > 0 (metres), got {head['max_depth']}")
        head["metric"] = True
    if "metric" in head:
        head["metric"] = bool(head["metric"])

    plugins_in = config.get("plugins") or []
    if not isinstance(plugins_in, (list, tuple)):
        raise ValueError(f"plugins must be a list of {{name: ..., options}} dicts, got {plugins_in!r}")
    register_plugins()
    plugins = []
    for entry in plugins_in:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"each plug-in entry needs a 'name', got {entry!r}")
        if entry["name"] not in PLUGINS:
            raise ValueError(f"unknown plug-in {entry['name']!r}; known: {', '.join(PLUGINS.names()) or 'none'}")
        plugins.append(copy.deepcopy(dict(entry)))
    names = [p["name"] for p in plugins]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"plug-ins {duplicated} are listed more than once")
    out = {"host": host, "encoder": copy.deepcopy(encoder_out), "head": head, "plugins": plugins}
    checkpointing = normalize_checkpointing(config.get("checkpointing"))
    if any(checkpointing.values()):  # optional key: {encoder, plugins, head} → bool (activation checkpointing)
        out["checkpointing"] = checkpointing
    return out


class VideoDepthModel(nn.Module):
    """Encoder, plug-ins and head: ``video (B, T, 3, H, W)`` → :class:`DepthOutput`.

    ``plugins`` is an ``nn.ModuleDict`` name → plug-in in config order. Early plug-ins transform
    the encoder's :class:`VideoFeatures` in order; mid/late ones act on the head's fused maps
    through its hooks. ``config`` (the normalised dict) is kept so checkpoints can embed it.
    """

    def __init__(
        self,
        encoder: DinoV2Encoder,
        head: nn.Module,
        plugins: Mapping[str, PlugIn] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.plugins = nn.ModuleDict(dict(plugins or {}))
        for name, plugin in self.plugins.items():
            position = getattr(plugin, "position", "early")
            if position not in PLUGIN_POSITIONS:
                raise ValueError(f"plug-in {name!r} has position {position!r}; allowed: {PLUGIN_POSITIONS}")
        self.config: dict[str, Any] | None = copy.deepcopy(dict(config)) if config is not None else None
        use_cpu_linear(self)  # CPU float32 inference: linear layers through oneDNN where it is faster

    def set_max_memory(self, max_memory: int | float | str | None) -> int | None:
        """Bound the activation memory of each micro-batch (``'2GB'``, bytes, or ``None``: no slicing).

        Encoder, plug-in blocks and head run their per-frame / per-position stages in slices sized
        from this budget; the output does not change. Returns the budget in bytes.
        """
        return set_max_memory(self, max_memory)

    def set_checkpointing(self, encoder: bool = False, plugins: bool = False, head: bool = False) -> None:
        """Activation checkpointing per part (training memory; gradients unchanged)."""
        set_checkpointing(self, encoder=encoder, plugins=plugins, head=head)

    @property
    def max_frames(self) -> int | None:
        """Longest clip the head accepts (``None``: any length)."""
        return getattr(self.head, "max_frames", None)

    @property
    def is_metric(self) -> bool:
        """Whether ``depth`` is metric depth in metres (metric VDA / DAv2) rather than relative disparity."""
        return bool(getattr(self.head, "metric", False))

    def check_input(self, video: Tensor) -> None:
        """Raise a ``ValueError``/``TypeError`` naming what is wrong with ``video`` and the fix."""
        if not isinstance(video, Tensor):
            raise TypeError(f"video must be a torch.Tensor (B, T, 3, H, W), got {type(video).__name__}")
        if video.dim() != 5:
            hint = " (a single clip (T, 3, H, W)? pass video[None])" if video.dim() == 4 else ""
            raise ValueError(f"video must be 5-D (B, T, 3, H, W), got shape {tuple(video.shape)}{hint}")
        if video.shape[2] != 3:
            raise ValueError(
                f"video must have 3 (RGB) channels in dim 2 of (B, T, 3, H, W), got shape {tuple(video.shape)}"
            )
        if not video.is_floating_point():
            raise TypeError(
                f"video dtype {video.dtype} is not floating point: convert to float and ImageNet-normalise "
                f"((x / 255 - mean) / std)"
            )
        problems = []
        for label, size in (("height", video.shape[-2]), ("width", video.shape[-1])):
            if size % PATCH_SIZE or size == 0:
                lower = max(PATCH_SIZE, size // PATCH_SIZE * PATCH_SIZE)
                upper = (size // PATCH_SIZE + 1) * PATCH_SIZE
                problems.append(f"{label} {size} (nearest valid: {lower} or {upper})")
        if problems:
            raise ValueError(
                f"image size {video.shape[-2]}x{video.shape[-1]} is not a multiple of {PATCH_SIZE}: "
                + "; ".join(problems) + ". Resize or crop the frames."
            )
        limit = self.max_frames
        if limit is not None and video.shape[1] > limit:
            raise ValueError(
                f"clip has {video.shape[1]} frames but the temporal head takes at most {limit} "
                f"(num_frames); split the video into windows (gemdepth.infer_video does)"
            )

    def _hooks(self, batch: int, frames: int) -> dict[str, Callable[[Tensor], Tensor]]:
        chains: dict[str, list[PlugIn]] = {}
        for plugin in self.plugins.values():
            if plugin.position != "early":
                chains.setdefault(plugin.position, []).append(plugin)

        def chain(plugins: list[PlugIn]) -> Callable[[Tensor], Tensor]:
            def run(x: Tensor) -> Tensor:
                for plugin in plugins:
                    x = plugin.forward_map(x, batch, frames)
                return x

            return run

        return {position: chain(plugins) for position, plugins in chains.items()}

    def early_projected_levels(self) -> tuple[int, ...]:
        """Encoder levels that no early plug-in reads: in inference, :meth:`encode` hands them to
        the head's per-level projection as each frame slice is encoded (ViT-S level 0: 384 → 48
        channels), so a clip never holds their full-width tokens. Not in training, where the
        projection's input is kept for backward anyway."""
        project = getattr(self.head, "project", None)
        if project is None or torch.is_grad_enabled():
            return ()
        read = {level for plugin in self.plugins.values() if plugin.position == "early"
                for level in getattr(plugin, "token_levels", range(4))}
        return tuple(level for level in range(4) if level not in read)

    def encode(self, video: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-frame encoder outputs of ``video (B, T, 3, H, W)``: 4 × ``(tokens (B·T, h·w, C), cls (B·T, C))``.

        The encoder sees every frame on its own, so these rows can be cached per frame and
        concatenated for a later clip (the windowed inference does, to run each frame once).
        In inference the levels of :meth:`early_projected_levels` come as the head's projected
        maps ``(B·T, C_i, h, w)`` instead (the head takes either form; same numbers).
        """
        self.check_input(video)
        images = video.flatten(0, 1)
        levels = self.early_projected_levels()
        if not levels:
            return self.encoder(images)
        patch_h, patch_w = video.shape[-2] // PATCH_SIZE, video.shape[-1] // PATCH_SIZE

        def encode_slice(x: Tensor) -> tuple[Tensor, ...]:  # one encoder call, then the projections
            pairs = self.encoder(x)
            return tuple(t for i, (tokens, cls) in enumerate(pairs) for t in (
                self.head.project(i, tokens, cls, patch_h, patch_w) if i in levels else tokens, cls))

        flat = map_rows(encode_slice, images.shape[0], self.encoder.frames_per_slice(images), images)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(4)]

    def decode(self, encoded: list[tuple[Tensor, Tensor]], batch: int, frames: int, height: int, width: int,
               release: bool = False) -> DepthOutput:
        """Everything after the encoder (plug-ins, head): ``encoded`` rows are ``(b, t)`` flattened,
        as :meth:`encode` returns them; ``forward(v) == decode(encode(v), *v.shape[:2], *v.shape[-2:])``.

        ``release=True`` hands ``encoded`` over (the list is emptied): each level's tokens are then
        freed as soon as a plug-in replaces them or the head is done with them, which lowers the
        peak of a window by up to three levels of tokens (``forward`` and the windowed inference do).
        """
        patch_h, patch_w = height // PATCH_SIZE, width // PATCH_SIZE

        def fits(tokens: Tensor) -> bool:  # (B·T, h·w, C) tokens or a projected (B·T, C_i, h, w) map
            grid = tokens.shape[1:2] == (patch_h * patch_w,) if tokens.dim() == 3 else tokens.shape[-2:] == (
                patch_h, patch_w)
            return tokens.shape[0] == batch * frames and grid

        if len(encoded) != 4 or not all(fits(t) for t, _ in encoded):
            raise ValueError(
                f"decode expects 4 (tokens (B·T, h·w, C), cls) pairs with B·T = {batch * frames} and "
                f"h·w = {patch_h * patch_w} (from {height}x{width}); got {len(encoded)} pairs, tokens of shapes "
                f"{[tuple(t.shape) for t, _ in encoded]}. Pass what encode() returned."
            )
        feats = VideoFeatures(
            tokens=[t for t, _ in encoded],
            cls=[c for _, c in encoded],
            batch=batch,
            frames=frames,
            patch_h=patch_h,
            patch_w=patch_w,
            image_h=height,
            image_w=width,
        )
        if release:
            encoded.clear()
        skip_3 = None
        if release and 2 in self.early_projected_levels() and hasattr(self.head, "skip_3"):
            # level 3 → the head's skip map before the plug-ins run (narrower: ViT-L 1024 → 256 channels)
            level_3 = (feats.tokens[2], feats.cls[2])
            feats.tokens[2] = feats.cls[2]  # a placeholder no plug-in reads (token_levels)
            skip_3 = self.head.skip_3(level_3, patch_h, patch_w, frames=frames)
            del level_3
        for plugin in self.plugins.values():
            if plugin.position == "early":
                release_free_heap(feats.tokens[3])  # large CPU windows: the last stage's freed slices
                feats = plugin(feats)
        levels: list[Any] = list(zip(feats.tokens, feats.cls))
        if skip_3 is not None:
            levels[2] = skip_3
            del skip_3
        if release:
            feats.tokens, feats.cls = [], []
        depth = self.head(levels, patch_h, patch_w, frames=frames, hooks=self._hooks(batch, frames), release=release)
        if depth.shape[-2:] != (height, width):
            depth = F.interpolate(depth, size=(height, width), mode="bilinear", align_corners=True)
        depth = F.relu(depth).squeeze(1).unflatten(0, (batch, frames))
        extras = feats.extras
        return DepthOutput(
            depth=depth,
            pose_enc=extras.get("pose_enc"),  # type: ignore[arg-type]
            extrinsics=extras.get("extrinsics"),  # type: ignore[arg-type]
            intrinsics=extras.get("intrinsics"),  # type: ignore[arg-type]
            extras={k: v for k, v in extras.items() if k not in OUTPUT_EXTRAS and isinstance(v, Tensor)},
        )

    def forward(self, video: Tensor) -> DepthOutput:
        encoded = self.encode(video)  # checks the input
        batch, frames, _, height, width = video.shape
        return self.decode(encoded, batch, frames, height, width, release=True)


def build_plugin(name: str, dim: int, head_features: int, options: Mapping[str, Any]) -> PlugIn:
    """``PLUGINS.get(name)(dim=..., head_features=..., **options)`` with a clear error on bad options."""
    cls = PLUGINS.get(name)
    try:
        return cls(dim=dim, head_features=head_features, **options)
    except TypeError as err:
        raise ValueError(f"plug-in {name!r} rejected its options {dict(options)}: {err}") from err


def build_model(config: Mapping[str, Any] | str) -> VideoDepthModel:
    """Build a :class:`VideoDepthModel` from a config dict, a preset name or a YAML path."""
    from gemdepth.models.presets import resolve_model_config

    cfg = normalize_config(resolve_model_config(config))
    encoder = DinoV2Encoder(cfg["encoder"])
    head = HOSTS.get(cfg["host"])(encoder.embed_dim, **cfg["head"])
    plugins: dict[str, PlugIn] = {}
    for entry in cfg["plugins"]:
        options = {k: v for k, v in entry.items() if k != "name"}
        plugins[entry["name"]] = build_plugin(entry["name"], encoder.embed_dim, cfg["head"]["features"], options)
    model = VideoDepthModel(encoder, head, plugins, config=cfg)
    if "checkpointing" in cfg:
        model.set_checkpointing(**cfg["checkpointing"])
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())

