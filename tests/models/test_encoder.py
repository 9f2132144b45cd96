"""DINOv2 encoder: positional-embedding resampling, presets, SwiGLU FFN, outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gemdepth.models.encoder import (
    ENCODER_PRESETS,
    DinoV2Encoder,
    interpolate_pos_embed,
    resolve_encoder_spec,
)

MINI = {"embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 4, "layer_idx": [0, 1, 2, 3]}


def _cubic_weights(t: float, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights (a = -0.75, PyTorch's choice) for taps at -1, 0, 1, 2."""

    def k(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return np.array([k(t + 1), k(t), k(1 - t), k(2 - t)])


def _resample_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """(n_out, n_in) bicubic matrix: source coordinate (i + 0.5) / scale - 0.5, border-clamped taps."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        w = _cubic_weights(src - base)
        for tap, weight in zip(range(base - 1, base + 3), w):
            m[i, min(max(tap, 0), n_in - 1)] += weight
    return m


def reference_pos_embed(pos_embed: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """DINOv2's resampling written out independently: separable bicubic with scale (g + 0.1) / 37."""
    table = pos_embed[0].double().numpy()
    side = math.isqrt(table.shape[0] - 1)
    grid = table[1:].reshape(side, side, -1)
    if (gh, gw) == (side, side):
        return pos_embed.clone()
    mh = _resample_matrix(side, gh, (gh + 0.1) / side)
    mw = _resample_matrix(side, gw, (gw + 0.1) / side)
    out = np.einsum("ai,ijc,bj->abc", mh, grid, mw).reshape(gh * gw, -1)
    return torch.from_numpy(np.concatenate([table[:1], out], 0)).float()[None]


@pytest.mark.parametrize("size", [(126, 224), (518, 518), (98, 154), (280, 140), (14, 14), (532, 700)])
def test_pos_embed_matches_dinov2_scale_factor_resampling(size: tuple[int, int]) -> None:
    gh, gw = size[0] // 14, size[1] // 14
    pos = torch.randn(1, 1370, 8) * 0.5
    ours = interpolate_pos_embed(pos, gh, gw)
    ref = reference_pos_embed(pos, gh, gw)
    assert ours.shape == (1, 1 + gh * gw, 8)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    torch.testing.assert_close(ours[:, 0], pos[:, 0])  # class slot kept


def test_pos_embed_differs_from_size_based_resampling() -> None:
    """The test above can tell the official formula from timm's/size-based resampling."""
    pos = torch.randn(1, 1370, 8)
    ours = interpolate_pos_embed(pos, 9, 16)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(9, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert (ours[0, 1:] - by_size.reshape(-1, 8)).abs().max() > 1e-2


def test_encoder_applies_the_official_resampling_in_forward() -> None:
    enc = DinoV2Encoder(MINI).eval()
    x = torch.randn(2, 3, 98, 154)
    with torch.no_grad():
        patches = enc.patch_embed(x).reshape(2, -1, 64)
        expected = torch.cat([enc.cls_token.expand(2, -1, -1), patches], 1) + interpolate_pos_embed(enc.pos_embed, 7, 11)
        got = enc._pos_embed(enc.patch_embed(x))
    torch.testing.assert_close(got, expected)


def test_presets_have_dav2_layer_indices() -> None:
    assert ENCODER_PRESETS["vits"].layer_idx == (2, 5, 8, 11)
    assert ENCODER_PRESETS["vitb"].layer_idx == (2, 5, 8, 11)
    assert ENCODER_PRESETS["vitl"].layer_idx == (4, 11, 17, 23)
    assert ENCODER_PRESETS["vitg"].layer_idx == (9, 19, 29, 39)
    assert (ENCODER_PRESETS["vitg"].embed_dim, ENCODER_PRESETS["vitg"].depth, ENCODER_PRESETS["vitg"].num_heads) == (1536, 40, 24)


def test_vitg_swiglu_shapes_on_meta() -> None:
    with torch.device("meta"):
        enc = DinoV2Encoder("vitg")
    sd = enc.state_dict()
    # DINOv2 SwiGLUFFNFused: hidden (int(6144 * 2 / 3) + 7) // 8 * 8 = 4096; w12 (8192, 1536), w3 (1536, 4096)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)
    assert sd["blocks.0.mlp.fc2.weight"].shape == (1536, 4096)
    assert sd["pos_embed"].shape == (1, 1370, 1536)
    assert "blocks.39.ls2.gamma" in sd


def test_swiglu_ffn_computes_silu_gate_on_first_half() -> None:
    enc = DinoV2Encoder({**MINI, "ffn": "swiglu"})
    mlp = enc.blocks[0].mlp
    hidden = (int(256 * 2 / 3) + 7) // 8 * 8
    assert mlp.fc1.weight.shape == (2 * hidden, 64)
    x = torch.randn(5, 64)
    w12, b12, w3, b3 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    h = x @ w12.T + b12
    expected = (F.silu(h[:, :hidden]) * h[:, hidden:]) @ w3.T + b3
    torch.testing.assert_close(mlp(x), expected)


def test_forward_returns_four_normed_token_maps() -> None:
    enc = DinoV2Encoder(MINI).eval()
    x = torch.randn(3, 3, 42, 56)
    with torch.no_grad():
        outs = enc(x)
    assert len(outs) == 4
    for tokens, cls in outs:
        assert tokens.shape == (3, 12, 64) and cls.shape == (3, 64)
    # the last map is the final-norm output of the full stack, as the plain timm forward gives
    with torch.no_grad():
        full = enc.norm(enc.blocks(enc._pos_embed(enc.patch_embed(x))))
    torch.testing.assert_close(outs[3][0], full[:, 1:])
    torch.testing.assert_close(outs[3][1], full[:, 0])


def test_forward_rejects_non_multiple_of_14() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        DinoV2Encoder(MINI)(torch.randn(1, 3, 50, 56))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vith", "unknown encoder preset 'vith'"),
        ({**MINI, "layer_idx": [0, 1, 2]}, "4 blocks"),
        ({**MINI, "layer_idx": [0, 1, 2, 9]}, "strictly increasing"),
        ({**MINI, "num_heads": 3}, "not divisible"),
        ({**MINI, "width": 3}, "unknown encoder keys"),
        ({"embed_dim": 64}, "missing"),
    ],
)
def test_bad_encoder_specs(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_encoder_spec(spec)  # type: ignore[arg-type]


def test_all_encoder_attention_goes_through_sdpa() -> None:
    """FLOPs of the SDPA ops equal the analytic attention cost of every block (nothing else attends)."""
    from gemdepth.flops import AttentionCalls

    enc = DinoV2Encoder(MINI).eval().requires_grad_(False)
    n, length = 2, 1 + 3 * 4
    with torch.no_grad(), AttentionCalls() as attention:
        enc(torch.randn(n, 3, 42, 56))
    assert attention.calls == 4  # one SDPA call per block
    assert attention.flops == 4 * n * 2 * length * length * 32 * 4  # 4 blocks, 2 heads of 32
