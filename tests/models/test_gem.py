"""GEM: parity with the official intermediates, pose maths, feeding masks, noise, gradients."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.spatial.transform import Rotation

from gemdepth.models.plugins.attention import Block
from gemdepth.models.plugins.gem import GEM, normalize_translations, relative_to_first_frame
from gemdepth.models.types import VideoFeatures
from gemdepth.weights.gemdepth import plugin_state_dict

B, T, PH, PW, H, W, C = 1, 8, 9, 16, 126, 224, 64


@lru_cache(maxsize=1)
def _fixture(path: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    root = Path(path)
    return load_file(root / "gemdepth_mini.safetensors"), load_file(root / "gemdepth_mini_io.safetensors")


def _official_gem(official_dir: Path, **kwargs) -> tuple[GEM, dict[str, torch.Tensor]]:
    sd, io = _fixture(str(official_dir))
    gem = GEM(C, 32, num_heads=4, camera_trunk_depth=1, **kwargs).eval()
    gem.load_state_dict(plugin_state_dict(sd, "gem"), strict=True)
    return gem, io


def _feats(io: dict[str, torch.Tensor]) -> VideoFeatures:
    return VideoFeatures(
        tokens=[io[f"enc_tokens_{i}"].clone() for i in range(4)],
        cls=[io[f"enc_cls_{i}"] for i in range(4)],
        batch=B, frames=T, patch_h=PH, patch_w=PW, image_h=H, image_w=W,
    )


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The fixture README's bound: max |ours − ref| ≤ 1e-4 · max |ref| (exact for all-zero refs)."""
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


# --------------------------------------------------------------------------- official parity
def test_camera_tokens_and_cameras_match_official(official_dir: Path) -> None:
    gem, io = _official_gem(official_dir)
    with torch.no_grad():
        _close(gem.camera_tokens(io["enc_tokens_3"], B, T, PH, PW), io["gem_camera_tokens"])
        feats = gem(_feats(io))
    _close(torch.stack(feats.extras["pose_enc"]), io["pose_enc_iters"])
    _close(feats.extras["extrinsics"], io["extrinsic"])
    intr, is_inf = feats.extras["intrinsics"], io["intrinsic_is_inf"]
    assert torch.equal(torch.isinf(intr), is_inf)
    _close(intr[~is_inf], io["intrinsic"][~is_inf])
    assert (intr[0, 1:, 0, 0] < 0).all()  # fov_w > π in frames 1-7: negative fx, not clamped


@pytest.mark.parametrize("masks", ["all", "none"])
def test_pose_embedding_matches_official(official_dir: Path, masks: str) -> None:
    gem, io = _official_gem(official_dir, eval_feed_pose=masks == "all")
    pre = "" if masks == "all" else "none."
    with torch.no_grad():
        feats = gem(_feats(io))
        pose = feats.extras["pose_enc"][-1]
        mask = feats.extras["pose_feed_mask"]
        assert mask.eq(masks == "all").all()
        q, t, s = gem.pose_inputs(pose, mask)
        eq, et, es = gem.encode_poses(q, t, s)
    for name, ours in [
        ("pose_rel_quat", q), ("pose_rel_trans_normalized", t), ("pose_log_scale", s),
        ("pose_embed_quat", eq), ("pose_embed_trans", et), ("pose_embed_scale", es),
        ("pose_embed_sum", eq + et + es),
    ]:
        _close(ours, io[pre + name])
    # GEM adds the embedding to every patch token of layer 4 and leaves layers 0-2 alone
    _close(feats.tokens[3], io["enc_tokens_3"] + io[pre + "pose_embed_sum"][:, None])
    for i in range(3):
        assert torch.equal(feats.tokens[i], io[f"enc_tokens_{i}"])
    if masks == "none":
        assert s.eq(torch.log(torch.tensor(2e-8))).all()


# --------------------------------------------------------------------------- pose maths
def test_relative_pose_against_scipy() -> None:
    rot = Rotation.random(6, random_state=3)
    quat = torch.tensor(rot.as_quat(), dtype=torch.float64)[None]  # scalar-last, unit
    trans = torch.randn(1, 6, 3, dtype=torch.float64)
    q_rel, t_rel = relative_to_first_frame(quat, trans)
    ref_rot = rot[0].inv() * rot
    ref_q = ref_rot.as_quat()
    sign = np.sign((q_rel[0].numpy() * ref_q).sum(-1, keepdims=True))
    np.testing.assert_allclose(q_rel[0].numpy(), sign * ref_q, atol=1e-12)
    ref_t = rot[0].inv().apply(trans[0].numpy() - trans[0, :1].numpy())
    np.testing.assert_allclose(t_rel[0].numpy(), ref_t, atol=1e-12)
    assert torch.equal(t_rel[0, 0], torch.zeros(3, dtype=torch.float64))  # exactly zero


def test_normalize_translations_counts_nonzero_frames_only() -> None:
    trans = torch.tensor([[[0.0, 0, 0], [3, 4, 0], [0, 0, 10]], [[0.0, 0, 0]] * 3])
    scaled, factor = normalize_translations(trans)
    assert factor[0].item() == pytest.approx(7.5)  # (5 + 10) / 2, the zero frame is not counted
    assert factor[1].item() == pytest.approx(1e-8)  # all zero: clipped at 1e-8
    torch.testing.assert_close(scaled[0], trans[0] / 7.5)
    assert torch.equal(scaled[1], trans[1])


# --------------------------------------------------------------------------- behaviour
def _small_feats(batch: int = 2, frames: int = 4, dim: int = 32) -> VideoFeatures:
    toks = [torch.randn(batch * frames, 6, dim) for _ in range(4)]
    return VideoFeatures(tokens=toks, cls=[t[:, 0] for t in toks], batch=batch, frames=frames,
                         patch_h=2, patch_w=3, image_h=28, image_w=42)


def _small_gem(**kwargs) -> GEM:
    return GEM(32, 16, num_heads=4, camera_trunk_depth=1, camera_num_heads=4, **kwargs)


def _clone(feats: VideoFeatures) -> VideoFeatures:
    return VideoFeatures(tokens=[t.clone() for t in feats.tokens], cls=feats.cls, batch=feats.batch,
                         frames=feats.frames, patch_h=feats.patch_h, patch_w=feats.patch_w,
                         image_h=feats.image_h, image_w=feats.image_w)


def test_eval_is_deterministic_and_feeds_every_frame() -> None:
    gem = _small_gem().eval()
    feats = _small_feats()
    with torch.no_grad():
        a, b = gem(_clone(feats)), gem(_clone(feats))
    assert torch.equal(a.tokens[3], b.tokens[3])
    assert a.extras["pose_feed_mask"].all()
    assert [p.shape for p in a.extras["pose_enc"]] == [(2, 4, 9)] * 4
    assert a.extras["extrinsics"].shape == (2, 4, 4, 4)
    assert a.extras["intrinsics"].shape == (2, 4, 3, 3)
    # pose_prob 0 (Table 9 baseline) feeds nothing at inference either
    assert not _small_gem(pose_prob=0.0).eval().feed_mask(2, 4, torch.device("cpu")).any()


def test_training_draws_masks_with_the_configured_probabilities() -> None:
    gem = _small_gem().train()
    draws = torch.stack([gem.feed_mask(64, 8, torch.device("cpu")) for _ in range(20)]).float()
    assert draws.mean().item() == pytest.approx(0.9 * 0.95 * 0.5, abs=0.03)
    # two of the three masks are per clip: ~55 % of clips get no pose at all (independent
    # per-frame draws would leave only (1 - 0.4275)^8 ≈ 1 % of clips empty)
    empty_clips = (draws.sum(dim=2) == 0).float().mean().item()
    assert empty_clips == pytest.approx(1 - 0.9 * 0.5, abs=0.05)
    always = _small_gem(pose_prob=1.0, pose_clip_prob=1.0, pose_frame_prob=1.0).train()
    assert always.feed_mask(4, 3, torch.device("cpu")).all()
    never = _small_gem(pose_prob=0.0).train()
    assert not never.feed_mask(4, 3, torch.device("cpu")).any()
    stochastic = _small_gem(stochastic_inference=True).eval()
    masks = torch.stack([stochastic.feed_mask(8, 4, torch.device("cpu")) for _ in range(10)])
    assert masks.any() and not masks.all()


def test_official_batch_order_reassigns_clip_values_to_rows_mod_b() -> None:
    gem = _small_gem(official_batch_order=True).eval()
    pose = torch.randn(2, 3, 9)
    pose[..., 3:7] = torch.nn.functional.normalize(pose[..., 3:7], dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    _, _, s_off = gem.pose_inputs(pose, mask)
    gem.official_batch_order = False
    _, _, s_ok = gem.pose_inputs(pose, mask)
    # correct: rows b·T + t carry clip b's factor; official: row i carries clip (i mod B)'s
    assert torch.equal(s_ok[:, 0], s_ok[[0, 0, 0, 3, 3, 3], 0])
    assert torch.equal(s_off[:, 0], s_ok[[0, 3, 0, 3, 0, 3], 0])


def test_pose_noise_is_seeded_and_leaves_cameras_alone() -> None:
    feats = _small_feats()
    torch.manual_seed(1)
    clean = _small_gem().eval()
    state = clean.state_dict()
    noisy_a = _small_gem(pose_noise=0.1, pose_noise_seed=7).eval()
    noisy_b = _small_gem(pose_noise=0.1, pose_noise_seed=7).eval()
    noisy_a.load_state_dict(state)
    noisy_b.load_state_dict(state)
    with torch.no_grad():
        c, a, b = clean(_clone(feats)), noisy_a(_clone(feats)), noisy_b(_clone(feats))
        a2 = noisy_a(_clone(feats))
    assert torch.equal(a.tokens[3], b.tokens[3])  # same seed, same noise
    assert not torch.equal(a.tokens[3], c.tokens[3])
    assert not torch.equal(a.tokens[3], a2.tokens[3])  # the generator moves on between calls
    assert torch.equal(a.extras["extrinsics"], c.extras["extrinsics"])


def test_depth_loss_does_not_reach_the_camera_head() -> None:
    gem = _small_gem().train()
    gem.pose_clip_prob = gem.pose_frame_prob = gem.pose_prob = 1.0
    out = gem(_small_feats())
    out.tokens[3].square().sum().backward()
    assert gem.cam_trans_encoder.mlp[0].weight.grad is not None
    assert gem.camera_head.pose_branch.fc2.weight.grad is None  # pose inputs are detached
    gem.zero_grad(set_to_none=True)
    out = gem(_small_feats())
    out.extras["pose_enc"][-1].sum().backward()
    assert gem.camera_head.pose_branch.fc2.weight.grad is not None
    assert gem.frame_blocks[0].attn.qkv.weight.grad is not None


def test_camera_head_runs_in_float32_under_autocast() -> None:
    gem = _small_gem().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = gem(_small_feats())
    assert all(p.dtype == torch.float32 for p in out.extras["pose_enc"])
    assert out.extras["intrinsics"].dtype == torch.float32


def test_global_block_query_rows_equal_full_attention() -> None:
    blk = Block(32, 4, qk_norm=True, init_values=0.5).eval()
    x = torch.randn(2, 10, 32)
    rows = torch.tensor([0, 5])
    cos, sin = torch.randn(10, 8), torch.randn(10, 8)
    with torch.no_grad():
        torch.testing.assert_close(blk(x, (cos, sin), rows), blk(x, (cos, sin))[:, rows])


def test_single_frame_and_input_errors() -> None:
    gem = _small_gem().eval()
    with torch.no_grad():
        out = gem(_small_feats(batch=1, frames=1))
    assert out.extras["pose_enc"][-1].shape == (1, 1, 9)
    bad = _small_feats()
    bad.tokens[3] = torch.randn(8, 6, 16)
    with pytest.raises(ValueError, match="GEM expects tokens"):
        gem(bad)
    with pytest.raises(ValueError, match="position 'early'"):
        _small_gem(position="mid")
    with pytest.raises(ValueError, match="pose_prob"):
        _small_gem(pose_prob=1.5)
