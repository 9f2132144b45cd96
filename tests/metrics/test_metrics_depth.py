"""Alignment and per-pixel depth metrics against NumPy references of the benchmark protocol."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from gemdepth.geometry import fit_scale_shift
from gemdepth.metrics import (
    RMSE,
    AbsRel,
    AlignConfig,
    Delta1,
    Delta2,
    Delta3,
    DepthMetrics,
    align_sequence,
    clear_alignment_cache,
)
from gemdepth.metrics import align as align_mod


def _noisy_sequence(rng: np.random.Generator, frames=4, height=12, width=16, max_depth=10.0):
    gt = rng.uniform(0.5, 12.0, (frames, height, width))  # some beyond max_depth → invalid
    gt[rng.random(gt.shape) < 0.1] = 0.0  # holes
    pred = 0.7 / np.maximum(gt, 0.3) + 0.05 + rng.normal(0, 0.05, gt.shape)  # can go below 1e-3
    return pred.astype(np.float32), gt.astype(np.float32), max_depth


def test_disparity_lstsq_matches_protocol_numpy(mref):
    rng = np.random.default_rng(0)
    pred, gt, max_depth = _noisy_sequence(rng)
    extra = rng.random(gt.shape) > 0.2
    ref_depth, ref_valid, ref_scale, ref_shift = mref.protocol_align(pred, gt, max_depth, extra)
    out = align_sequence(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(extra),
                         AlignConfig(max_depth=max_depth, chunk_frames=3), use_cache=False)
    assert out.scale == pytest.approx(ref_scale, rel=1e-9)
    assert out.shift == pytest.approx(ref_shift, rel=1e-9, abs=1e-12)
    np.testing.assert_array_equal(out.valid.numpy(), ref_valid)
    np.testing.assert_allclose(out.depth.numpy(), ref_depth, rtol=1e-6)  # float32 output


def test_lstsq_agrees_with_geometry_fit_scale_shift():
    rng = np.random.default_rng(1)
    pred, gt, max_depth = _noisy_sequence(rng)
    p, g = torch.from_numpy(pred).double(), torch.from_numpy(gt).double()
    mask = (g > 1e-3) & (g < max_depth)
    scale, shift = fit_scale_shift(p.clamp_min(1e-3), torch.where(mask, 1 / g, 0 * g), mask)
    out = align_sequence(torch.from_numpy(pred), torch.from_numpy(gt), None, AlignConfig(max_depth=max_depth),
                         use_cache=False)
    assert out.scale == pytest.approx(float(scale), rel=1e-9)
    assert out.shift == pytest.approx(float(shift), rel=1e-9)


@pytest.mark.parametrize("mode", ["depth_lstsq", "median", "none"])
def test_other_alignment_modes(mode):
    rng = np.random.default_rng(2)
    pred, gt, max_depth = _noisy_sequence(rng)
    valid = (gt > 1e-3) & (gt < max_depth)
    pdepth = 1.0 / np.clip(pred.astype(np.float64), 1e-3, None)
    if mode == "depth_lstsq":
        a = np.stack([pdepth[valid], np.ones(valid.sum())], -1)
        (s, t), *_ = np.linalg.lstsq(a, gt[valid].astype(np.float64), rcond=None)
        expect = s * pdepth + t
    elif mode == "median":
        expect = np.median(gt[valid].astype(np.float64)) / np.median(pdepth[valid]) * pdepth
    else:
        expect = pdepth
    expect = np.clip(expect, 1e-3, max_depth)
    out = align_sequence(torch.from_numpy(pred), torch.from_numpy(gt), None,
                         AlignConfig(mode=mode, max_depth=max_depth), use_cache=False)
    # torch's median of an even count is the lower middle value, numpy's the mean of both
    np.testing.assert_allclose(out.depth.numpy(), expect, rtol=1e-6 if mode != "median" else 2e-2)


def test_depth_prediction_kind_and_metric_none():
    gt = torch.rand(3, 8, 9) * 5 + 1
    metric = DepthMetrics("none", pred_kind="depth", max_depth=10.0)
    metric.update(gt.clone(), gt)
    res = metric.compute()
    assert float(res["abs_rel"]) == pytest.approx(0.0, abs=1e-7)
    metric = DepthMetrics("none", max_depth=10.0)  # disparity kind: metric disparity 1/gt
    metric.update(1.0 / gt, gt)
    assert float(metric.compute()["delta1"]) == 1.0


def test_exact_affine_disparity_scores_perfectly(room):
    gt = torch.from_numpy(room.depth).float()
    pred = 3.7 / gt + 0.25  # an exact affine transform of the true disparity
    metric = DepthMetrics(max_depth=20.0)
    metric.update(pred, gt, name="affine")
    res = metric.compute()
    assert float(res["abs_rel"]) < 1e-6
    assert float(res["delta1"]) == 1.0 and float(res["delta3"]) == 1.0
    assert float(res["rmse"]) < 1e-5


def test_depth_metrics_match_numpy_and_drop_empty_frames(mref):
    rng = np.random.default_rng(3)
    seqs = []
    for i in range(3):
        pred, gt, max_depth = _noisy_sequence(rng, frames=3 + i)
        if i == 1:
            gt[1] = 0.0  # an all-invalid frame: dropped and counted
            gt[2] = 50.0  # beyond max depth: also all-invalid
        seqs.append((pred, gt))
    metric = DepthMetrics(max_depth=10.0)
    expected = []
    for i, (pred, gt) in enumerate(seqs):
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), name=f"s{i}")
        depth, valid, *_ = mref.protocol_align(pred, gt, 10.0)
        expected.append(mref.per_frame_scores(depth, gt, valid))
    res = metric.compute()
    for key in ("abs_rel", "delta1", "delta2", "delta3", "rmse"):
        assert float(res[key]) == pytest.approx(np.mean([e[key] for e in expected]), rel=1e-5), key
    assert metric.frames_dropped == 2
    assert metric.frames_scored == sum(e["frames"] for e in expected)
    assert metric.sequences_scored == 3


def test_single_value_wrappers_equal_dict():
    rng = np.random.default_rng(4)
    pred, gt, _ = _noisy_sequence(rng)
    pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)
    full = DepthMetrics(max_depth=10.0)
    full.update(pred_t, gt_t)
    ref = full.compute()
    for cls, key in ((AbsRel, "abs_rel"), (Delta1, "delta1"), (Delta2, "delta2"), (Delta3, "delta3"), (RMSE, "rmse")):
        m = cls(max_depth=10.0)
        m.update(pred_t, gt_t)
        assert float(m.compute()) == float(ref[key])


def test_batched_update_equals_sequential():
    rng = np.random.default_rng(5)
    preds, gts = zip(*[_noisy_sequence(rng)[:2] for _ in range(3)])
    batched, seq = DepthMetrics(max_depth=10.0), DepthMetrics(max_depth=10.0)
    batched.update(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(gts)), name="batch")
    for p, g in zip(preds, gts):
        seq.update(torch.from_numpy(p), torch.from_numpy(g))
    for k, v in batched.compute().items():
        assert float(v) == pytest.approx(float(seq.compute()[k]), rel=1e-12)


def test_all_invalid_sequence_is_skipped_and_counted(caplog):
    metric = DepthMetrics(max_depth=10.0)
    with caplog.at_level(logging.WARNING, logger="gemdepth.metrics"):
        metric.update(torch.rand(3, 4, 5), torch.zeros(3, 4, 5), name="dark_room")
    assert metric.sequences_skipped == 1 and metric.frames_dropped == 3
    assert "dark_room" in caplog.text
    assert torch.isnan(metric.compute()["abs_rel"])


@pytest.mark.parametrize(
    ("pred", "gt", "valid", "message"),
    [
        (torch.rand(3, 4, 5), torch.rand(2, 4, 5), None, "3 frames but gt_depth has 2"),
        (torch.rand(3, 4, 5), torch.rand(3, 4, 6), None, "resize_pred=True"),
        (torch.rand(4, 5), torch.rand(4, 5), None, r"\(T, H, W\)"),
        (torch.rand(3, 4, 5), torch.rand(3, 4, 5), torch.ones(3, 4, 5), "bool mask"),
        (torch.rand(3, 4, 5), torch.rand(3, 4, 5), torch.ones(3, 4, 4, dtype=torch.bool), "valid has shape"),
    ],
)
def test_bad_shapes_raise_clear_errors(pred, gt, valid, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DepthMetrics().update(pred, gt, valid, name="seqA")


def test_non_finite_prediction_names_the_sequence():
    pred = torch.rand(3, 4, 5)
    pred[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"sequence 'kitchen_07'.*non-finite.*frame 2"):
        AbsRel().update(pred, torch.rand(3, 4, 5) + 1, name="kitchen_07")


def test_resize_pred_uses_bilinear_half_pixel():
    gt = torch.rand(2, 8, 10) + 1
    disp = 1.0 / gt
    small = torch.nn.functional.interpolate(disp[:, None], size=(4, 5), mode="area")[:, 0]
    out = align_sequence(small, gt, None, AlignConfig(resize_pred=True), use_cache=False)
    assert out.depth.shape == gt.shape
    expect = torch.nn.functional.interpolate(small[:, None], size=(8, 10), mode="bilinear", align_corners=False)[:, 0]
    ref = align_sequence(expect, gt, None, AlignConfig(), use_cache=False)
    torch.testing.assert_close(out.depth, ref.depth)


def test_alignment_cache_shared_and_invalidated(monkeypatch):
    calls = []
    real = align_mod._compute_alignment
    monkeypatch.setattr(align_mod, "_compute_alignment", lambda *a: calls.append(1) or real(*a))
    clear_alignment_cache()
    pred, gt = torch.rand(2, 6, 7), torch.rand(2, 6, 7) + 1
    for cls in (AbsRel, Delta1, RMSE):
        cls().update(pred, gt)
    assert len(calls) == 1  # three metrics, one alignment
    pred.mul_(2.0)  # in-place change must invalidate the cached result
    AbsRel().update(pred, gt)
    assert len(calls) == 2
    AbsRel(max_depth=5.0).update(pred, gt)  # other config → recomputed
    assert len(calls) == 3
