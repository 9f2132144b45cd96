"""Temporal head: sinusoidal table, attention over time, identity init, frame mixing."""

from __future__ import annotations

import math

import pytest
import torch

from gemdepth.models.temporal import TemporalAttention, TemporalDPTHead, TemporalModule, sinusoidal_table


def test_sinusoidal_table_formula() -> None:
    table = sinusoidal_table(32, 12)
    assert table.shape == (1, 32, 12)
    for t in (0, 1, 7, 31):
        for i in range(6):
            angle = t / (10000 ** (2 * i / 12))
            assert table[0, t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[0, t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_temporal_attention_matches_explicit_softmax() -> None:
    attn = TemporalAttention(dim=16, heads=4, max_len=8).eval()
    b, t, length = 2, 5, 3
    x = torch.randn(b * length, t, 16)  # one time sequence per (batch, position)
    with torch.no_grad():
        out = attn(x)
        # independent: per batch and spatial position, softmax(q kᵀ / √d) v over the T frames
        seq = x.reshape(b, length, t, 16) + attn.pos_encoder.pe[0, :t]
        q, k, v = attn.to_q(seq), attn.to_k(seq), attn.to_v(seq)
        split = lambda z: z.reshape(b, length, t, 4, 4)  # noqa: E731
        qh, kh, vh = split(q), split(k), split(v)
        scores = torch.einsum("blthd,blshd->blhts", qh, kh) / math.sqrt(4)
        ref = torch.einsum("blhts,blshd->blthd", scores.softmax(-1), vh).reshape(b, length, t, 16)
        ref = attn.to_out[0](ref).reshape(b * length, t, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_motion_module_starts_as_identity() -> None:
    mod = TemporalModule(32, max_len=8)
    x = torch.randn(4, 32, 3, 3)
    torch.testing.assert_close(mod(x, 2), x)


def _head() -> TemporalDPTHead:
    head = TemporalDPTHead(16, features=32, out_channels=[32, 32, 64, 64], num_frames=6).eval()
    torch.manual_seed(1)
    for mm in head.motion_modules:  # leave identity init so that time actually mixes
        torch.nn.init.normal_(mm.temporal_transformer.proj_out.weight, std=0.2)
    torch.nn.init.constant_(head.scratch.output_conv2[2].bias, 1.0)  # keep the final ReLU open
    return head


def test_frames_interact_through_motion_modules() -> None:
    head = _head()
    b, t, h, w = 1, 3, 2, 3
    feats = [(torch.randn(b * t, h * w, 16), torch.randn(b * t, 16)) for _ in range(4)]
    edited = [(tok.clone(), cls) for tok, cls in feats]
    for tok, _ in edited:
        tok[2] += 1.0  # change the last frame only
    with torch.no_grad():
        a, c = head(feats, h, w, frames=t), head(edited, h, w, frames=t)
    assert a.shape == (3, 1, 28, 42)
    assert (a[0] - c[0]).abs().max() > 1e-4  # frame 0 sees frame 2


def test_clip_longer_than_num_frames_is_rejected() -> None:
    head = _head()
    feats = [(torch.randn(7, 4, 16), torch.randn(7, 16)) for _ in range(4)]
    with pytest.raises(ValueError, match="longer than the temporal head's num_frames=6"):
        head(feats, 2, 2, frames=7)


def test_state_dict_has_official_names_and_pe_buffers() -> None:
    sd = TemporalDPTHead(16, features=32, out_channels=[32, 32, 64, 64], num_frames=6).state_dict()
    prefix = "motion_modules.0.temporal_transformer."
    for name in ("norm.weight", "proj_in.weight", "proj_out.bias", "transformer_blocks.0.ff.net.0.proj.weight",
                 "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.ff_norm.weight",
                 "transformer_blocks.0.norms.1.bias", "transformer_blocks.0.attention_blocks.1.to_out.0.weight"):
        assert prefix + name in sd
    pes = [k for k in sd if k.endswith("pos_encoder.pe")]
    assert len(pes) == 8
    assert sd["motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape == (1, 6, 64)
    assert sd["motion_modules.3.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape == (1, 6, 32)


def test_temporal_attention_uses_sdpa_over_time_only() -> None:
    from gemdepth.flops import AttentionCalls

    attn = TemporalAttention(dim=16, heads=4, max_len=8).eval().requires_grad_(False)
    b, t, length = 2, 5, 3
    with torch.no_grad(), AttentionCalls() as attention:
        attn(torch.randn(b * length, t, 16))
    assert attention.calls == 1
    assert attention.flops == 4 * (b * length) * 4 * t * t * 4  # sequences of T per position, 4 heads of 4


@pytest.mark.parametrize("batch", [1, 2])
def test_motion_module_in_position_slices_matches_one_call(batch: int) -> None:
    """Inference with a small budget: the time sequences of a few positions at a time, added straight
    into the output; the same numbers as the one-call path (which autograd keeps using)."""
    torch.manual_seed(0)
    module = TemporalModule(32, max_len=8).eval()
    torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.2)
    frames = 5
    x = torch.randn(batch * frames, 32, 6, 7)
    transformer = module.temporal_transformer
    calls: list[int] = []
    real = transformer._sequences
    transformer._sequences = lambda seq: (calls.append(seq.shape[0]), real(seq))[1]  # type: ignore[method-assign]
    with torch.no_grad():
        transformer.max_memory = None
        ref = module(x, frames)
        assert calls == [batch * 42]
        calls.clear()
        transformer.max_memory = 1
        out = module(x, frames)
    assert max(calls) < batch * 42 and sum(calls) == batch * 42
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-6


def test_geglu_inference_product_in_place_equals_the_autograd_formula() -> None:
    """In inference GEGLU multiplies into GELU's own output (one 4C-wide map less per slice of a
    motion module): the same numbers as ``value * gelu(gate)``, which training keeps for autograd."""
    from gemdepth.models.temporal import GEGLU

    torch.manual_seed(0)
    layer = GEGLU(16, 64)
    x = torch.randn(5, 7, 16)
    value, gate = layer.proj(x).chunk(2, dim=-1)
    expected = value * torch.nn.functional.gelu(gate)
    with torch.inference_mode():
        assert torch.equal(layer(x), expected)
    x.requires_grad_(True)
    out = layer(x)
    out.sum().backward()
    assert torch.equal(out.detach(), expected) and x.grad is not None
