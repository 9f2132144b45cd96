"""ASTT: parity with the official intermediates, frame-index table, switches, positions, dropout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gemdepth.models.plugins.astt import ASTT, frame_index_embedding
from gemdepth.models.types import VideoFeatures
from gemdepth.weights.gemdepth import plugin_state_dict

B, T, PH, PW, C = 1, 8, 9, 16, 64


@lru_cache(maxsize=1)
def _fixture(path: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    root = Path(path)
    return load_file(root / "gemdepth_mini.safetensors"), load_file(root / "gemdepth_mini_io.safetensors")


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def _feats(tokens3: torch.Tensor, batch: int, frames: int, h: int, w: int) -> VideoFeatures:
    toks = [tokens3.clone() for _ in range(4)]
    return VideoFeatures(tokens=toks, cls=[t[:, 0] for t in toks], batch=batch, frames=frames,
                         patch_h=h, patch_w=w, image_h=14 * h, image_w=14 * w)


@pytest.mark.parametrize("masks", ["all", "none"])
def test_astt_matches_official(official_dir: Path, masks: str) -> None:
    sd, io = _fixture(str(official_dir))
    astt = ASTT(C, 32, num_heads=4).eval()
    astt.load_state_dict(plugin_state_dict(sd, "astt"), strict=True)
    pre = "" if masks == "all" else "none."
    tokens = io["enc_tokens_3"] + io[pre + "pose_embed_sum"][:, None]  # what GEM hands over
    with torch.no_grad():
        _close(astt.prepare(tokens, B, T), io[pre + "astt_input"])
        out = astt(_feats(tokens, B, T, PH, PW)).tokens[3]
    _close(out, io[pre + "astt_output"])


def _official_idx_table(dim: int, frames: int) -> np.ndarray:
    """The official ``get_1d_sincos_pos_embed_from_grid(dim, np.arange(frames))``, re-derived."""
    omega = np.arange(dim // 2, dtype=float) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", np.arange(frames).astype(float), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)


@pytest.mark.parametrize("dim", [64, 1024])
def test_frame_index_embedding_equals_official_table(dim: int) -> None:
    ref = torch.from_numpy(_official_idx_table(dim, 50))
    ours = frame_index_embedding(80, dim)  # not limited to the official 50 rows
    assert ours.shape == (80, dim)
    assert torch.equal(ours[:50], ref)
    assert torch.equal(frame_index_embedding(8, dim), ours[:8])


def _small(**kwargs) -> ASTT:
    return ASTT(32, 16, num_heads=2, **kwargs).eval()


def test_eval_deterministic_and_stochastic_flag() -> None:
    x = torch.randn(2 * 3, 6, 32)
    astt = _small()
    with torch.no_grad():
        a = astt(_feats(x, 2, 3, 2, 3)).tokens[3]
        b = astt(_feats(x, 2, 3, 2, 3)).tokens[3]
        assert torch.equal(a, b)
        astt.stochastic_inference = True  # official: attention dropout 0.1 even in eval
        c = astt(_feats(x, 2, 3, 2, 3)).tokens[3]
        d = astt(_feats(x, 2, 3, 2, 3)).tokens[3]
    assert not torch.equal(c, d) and not torch.equal(a, c)
    astt.stochastic_inference = False
    astt.train()
    with torch.no_grad():
        e = astt(_feats(x, 2, 3, 2, 3)).tokens[3]
    assert not torch.equal(a, e)


def test_halves_mix_as_described() -> None:
    """Time blocks mix one patch across frames; spatial blocks mix all patches of all frames."""
    torch.manual_seed(0)
    batch, frames, h, w = 1, 4, 2, 3
    x = torch.randn(batch * frames, h * w, 32)
    bumped = x.clone()
    bumped[0, 2] += 1.0  # frame 0, patch 2
    for kwargs, expect_other_patches in [({"spatial": False}, False), ({"temporal": False}, True)]:
        astt = _small(**kwargs)
        with torch.no_grad():
            delta = (astt(_feats(bumped, batch, frames, h, w)).tokens[3]
                     - astt(_feats(x, batch, frames, h, w)).tokens[3]).abs().amax(-1)
        assert (delta[1:, 2] > 0).all()  # patch 2 of every other frame changes
        others = torch.cat([delta[1:, :2], delta[1:, 3:]], dim=1)
        assert bool((others > 0).any()) is expect_other_patches
    assert not any(k.startswith("spatial_blocks") for k in _small(spatial=False).state_dict())
    assert not any(k.startswith("time_blocks") for k in _small(temporal=False).state_dict())


def test_switches_change_the_output() -> None:
    torch.manual_seed(0)
    full = _small()
    state = full.state_dict()
    x = torch.randn(6, 6, 32)
    outs = {}
    for name, kwargs in [("full", {}), ("spatial", {"temporal": False}), ("temporal", {"spatial": False}),
                         ("one_pair", {"depth": 1})]:
        model = _small(**kwargs)
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
        with torch.no_grad():
            outs[name] = model(_feats(x, 2, 3, 2, 3)).tokens[3]
    for name in ("spatial", "temporal", "one_pair"):
        assert not torch.allclose(outs[name], outs["full"], atol=1e-3), name
    with pytest.raises(ValueError, match="does nothing"):
        _small(spatial=False, temporal=False)


@pytest.mark.parametrize("position,size", [("mid", (3, 4)), ("late", (24, 32)), ("late", (26, 30))])
def test_map_positions_start_as_identity_and_keep_shape(position: str, size: tuple[int, int]) -> None:
    astt = _small(position=position)
    x = torch.randn(2 * 3, 16, *size)
    with torch.no_grad():
        assert torch.equal(astt.forward_map(x, 2, 3), x)  # zero-initialised proj_out
        torch.nn.init.normal_(astt.proj_out.weight)
        y = astt.forward_map(x, 2, 3)
    assert y.shape == x.shape and not torch.allclose(y, x)
    with pytest.raises(RuntimeError, match="forward_map"):
        astt(_feats(torch.randn(6, 6, 32), 2, 3, 2, 3))


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="ASTT expects tokens"):
        _small()(_feats(torch.randn(6, 6, 16), 2, 3, 2, 3))
    with pytest.raises(ValueError, match="position must be one of"):
        _small(position="middle")
    with pytest.raises(ValueError, match="needs head_features"):
        ASTT(32, None, position="mid")
    with pytest.raises(RuntimeError, match="'early'"):
        _small().forward_map(torch.randn(6, 16, 3, 3), 2, 3)
