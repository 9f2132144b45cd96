"""DINOv2 ViT encoder built with timm, returning the four token maps the depth heads read.

timm's :class:`~timm.models.vision_transformer.VisionTransformer` supplies the blocks (fused
``scaled_dot_product_attention``, LayerScale, the SwiGLU FFN for ViT-g) and
the block structure of ``forward_intermediates`` (written out in :meth:`DinoV2Encoder._intermediates`
so frames run in memory-bounded slices and blocks can be checkpointed with
``set_grad_checkpointing``); only the positional-embedding resampling is overridden, because
DINOv2 (and so every Depth Anything checkpoint) resizes the 37×37 grid by bicubic *scale factors*
``((h + 0.1) / 37, (w + 0.1) / 37)``, which timm's size-based resampling does not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import GluMlp, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gemdepth.models.chunking import DEFAULT_MAX_MEMORY, map_rows, rows_per_chunk

PATCH_SIZE = 14
IMG_SIZE = 518  # 37×37 patch grid, the size the released DINOv2 pos-embeds were trained at
INTERPOLATE_OFFSET = 0.1  # DINOv2's guard against floor() rounding in the output size


@dataclass(frozen=True)
class EncoderSpec:
    """Size of a DINOv2 ViT and which blocks feed the head (0-based)."""

    embed_dim: int
    depth: int
    num_heads: int
    layer_idx: tuple[int, ...]
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (GELU MLP) or "swiglu" (DINOv2's fused SwiGLU, ViT-g)
    name: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "layer_idx": list(self.layer_idx),
        }
        if self.ffn != "mlp":
            out["ffn"] = self.ffn
        return out


# Sizes of the released DINOv2 models, with Depth Anything V2's intermediate-layer indices.
ENCODER_PRESETS: dict[str, EncoderSpec] = {
    "vits": EncoderSpec(384, 12, 6, (2, 5, 8, 11), name="vits"),
    "vitb": EncoderSpec(768, 12, 12, (2, 5, 8, 11), name="vitb"),
    "vitl": EncoderSpec(1024, 24, 16, (4, 11, 17, 23), name="vitl"),
    "vitg": EncoderSpec(1536, 40, 24, (9, 19, 29, 39), ffn="swiglu", name="vitg"),
}
_SPEC_KEYS = {"embed_dim", "depth", "num_heads", "mlp_ratio", "layer_idx", "ffn"}
_REQUIRED_KEYS = {"embed_dim", "depth", "num_heads", "layer_idx"}


def resolve_encoder_spec(spec: str | Mapping[str, Any] | EncoderSpec) -> EncoderSpec:
    """A preset name (``vits``/``vitb``/``vitl``/``vitg``) or a dict → a checked :class:`EncoderSpec`."""
    if isinstance(spec, EncoderSpec):
        return spec
    if isinstance(spec, str):
        if spec not in ENCODER_PRESETS:
            raise ValueError(
                f"unknown encoder preset {spec!r}; known: {', '.join(ENCODER_PRESETS)} "
                f"(or a dict with {sorted(_REQUIRED_KEYS)})"
            )
        return ENCODER_PRESETS[spec]
    if not isinstance(spec, Mapping):
        raise TypeError(f"encoder must be a preset name or a dict, got {type(spec).__name__}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown encoder keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    missing = _REQUIRED_KEYS - set(spec)
    if missing:
        raise ValueError(f"encoder dict is missing {sorted(missing)}")
    out = EncoderSpec(
        embed_dim=int(spec["embed_dim"]),
        depth=int(spec["depth"]),
        num_heads=int(spec["num_heads"]),
        layer_idx=tuple(int(i) for i in spec["layer_idx"]),
        mlp_ratio=float(spec.get("mlp_ratio", 4.0)),
        ffn=str(spec.get("ffn", "mlp")),
    )
    if out.embed_dim % out.num_heads:
        raise ValueError(f"encoder embed_dim {out.embed_dim} is not divisible by num_heads {out.num_heads}")
    if len(out.layer_idx) != 4:
        raise ValueError(f"encoder layer_idx must name 4 blocks, got {list(out.layer_idx)}")
    if list(out.layer_idx) != sorted(set(out.layer_idx)) or not all(0 <= i < out.depth for i in out.layer_idx):
        raise ValueError(
            f"encoder layer_idx {list(out.layer_idx)} must be strictly increasing block indices "
            f"in [0, {out.depth - 1}]"
        )
    if out.ffn not in ("mlp", "swiglu"):
        raise ValueError(f"encoder ffn must be 'mlp' or 'swiglu', got {out.ffn!r}")
    return out


def _dinov2_swiglu(in_features: int, hidden_features: int, **kwargs: Any) -> GluMlp:
    """DINOv2's ``SwiGLUFFNFused`` as a timm :class:`GluMlp` (``w12`` → ``fc1``, ``w3`` → ``fc2``).

    DINOv2 shrinks the hidden width to ``round_up(int(hidden * 2/3), 8)`` and gates with SiLU on
    the first half, which ``GluMlp(gate_last=False)`` computes; ``act_layer`` is forced to SiLU.
    """
    hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
    kwargs.pop("act_layer", None)
    return GluMlp(in_features, hidden_features=2 * hidden, act_layer=nn.SiLU, gate_last=False, **kwargs)


def interpolate_pos_embed(
    pos_embed: Tensor, grid_h: int, grid_w: int, offset: float = INTERPOLATE_OFFSET
) -> Tensor:
    """Resample a DINOv2 ``(1, 1 + N², C)`` pos-embed to a ``grid_h × grid_w`` patch grid.

    Same function as DINOv2's ``interpolate_pos_encoding``: the class slot is kept, the N×N grid
    goes through bicubic interpolation with *scale factors* ``((grid + offset) / N)`` (PyTorch then
    uses those factors in its coordinate mapping), align_corners False, no antialias, float32.
    At the native grid (N×N) the table is returned unchanged, as DINOv2 does.
    """
    n = pos_embed.shape[1] - 1
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"pos_embed has {n} patch slots, not a square grid")
    if grid_h == side and grid_w == side:
        return pos_embed
    dim = pos_embed.shape[-1]
    table = pos_embed.float()
    grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid_h + offset) / side, (grid_w + offset) / side)
    with torch.autocast(device_type=pos_embed.device.type, enabled=False):
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if grid.shape[-2:] != (grid_h, grid_w):  # pragma: no cover - guarded by the offset
        raise RuntimeError(f"pos-embed resampling gave {tuple(grid.shape[-2:])}, wanted {(grid_h, grid_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([table[:, :1], grid], dim=1).to(pos_embed.dtype)


class DinoV2Encoder(VisionTransformer):
    """DINOv2 ViT/14 (timm) whose forward returns the head's four ``(tokens, cls)`` pairs.

    Parameter names follow timm's ViT (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.i.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``),
    which is also DINOv2's layout apart from the unused ``mask_token`` and ViT-g's ``w12``/``w3``.
    """

    def __init__(self, spec: str | Mapping[str, Any] | EncoderSpec = "vitl", weight_init: str = "") -> None:
        spec = resolve_encoder_spec(spec)
        super().__init__(
            img_size=IMG_SIZE,
            patch_size=PATCH_SIZE,
            num_classes=0,
            global_pool="token",
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=spec.mlp_ratio,
            qkv_bias=True,
            init_values=1.0,
            class_token=True,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            mlp_layer=_dinov2_swiglu if spec.ffn == "swiglu" else Mlp,
            weight_init=weight_init,  # type: ignore[arg-type]
        )
        self.spec = spec
        self.layer_idx = list(spec.layer_idx)
        self.max_memory: int | None = DEFAULT_MAX_MEMORY

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prepend the class token and add DINOv2-resampled positions to NHWC patch tokens."""
        batch, grid_h, grid_w, dim = x.shape
        pos = interpolate_pos_embed(self.pos_embed, grid_h, grid_w).to(x.dtype)
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(x.dtype), x.reshape(batch, -1, dim)], dim=1)
        return self.pos_drop(x + pos)

    def bytes_per_frame(self, tokens: int, element_size: int = 4) -> int:
        """Working memory of one frame in a block: qkv (3C), attention output and residuals (3C),
        the MLP's hidden layer before and after its activation (2·4C, GLU alike), ×``tokens``."""
        hidden = self.blocks[0].mlp.fc1.out_features if len(self.blocks) else 4 * self.embed_dim
        return int(element_size * tokens * (6 * self.embed_dim + 2 * hidden))

    def _intermediates(self, images: Tensor) -> tuple[Tensor, ...]:
        """``(N, 3, H, W)`` → ``(tokens_0, cls_0, …, tokens_3, cls_3)``, timm's ``forward_intermediates``
        (``norm=True``, ``stop_early=True``, ``NLC``) written out so blocks can be checkpointed
        non-reentrantly and frames sliced."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
        outs: list[Tensor] = []
        take = set(self.layer_idx)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks[: self.layer_idx[-1] + 1]):
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
            if i in take:
                y = self.norm(x)
                outs += [y[:, self.num_prefix_tokens:], y[:, 0]]
        return tuple(outs)

    def frames_per_slice(self, images: Tensor) -> int:
        """How many of ``images (N, 3, H, W)`` one slice encodes within ``max_memory``."""
        tokens = 1 + (images.shape[-2] // PATCH_SIZE) * (images.shape[-1] // PATCH_SIZE)
        # the input's element size (under autocast this overestimates, which only means smaller slices)
        return rows_per_chunk(images.shape[0], self.bytes_per_frame(tokens, images.element_size()), self.max_memory)

    def forward(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:  # type: ignore[override]
        """``(N, 3, H, W)`` → 4 × ``(tokens (N, h·w, C), cls (N, C))`` after the final norm.

        Frames run in slices of :meth:`frames_per_slice` (each frame is encoded on its own, so the
        numbers do not depend on the slicing).
        """
        if images.shape[-2] % PATCH_SIZE or images.shape[-1] % PATCH_SIZE:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {PATCH_SIZE}"
            )
        flat = map_rows(self._intermediates, images.shape[0], self.frames_per_slice(images), images)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
