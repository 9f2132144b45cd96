"""TAE and TCD against per-pixel / KD-tree references, and on consistent vs perturbed scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemdepth.metrics import TAE, TCD
from gemdepth.metrics.points import sample_pixels
from gemdepth.metrics.temporal import chamfer_pairs, tae_errors


def _tensors(room, depth=None):
    d = room.depth if depth is None else depth
    return (torch.from_numpy(d).float(), torch.from_numpy(room.K).float(), torch.from_numpy(room.E).float())


def _small_scene(mref, seed=0, frames=4, height=10, width=13, noise=0.03):
    """A tiny room sequence with noisy depth (so TAE is clearly non-zero)."""
    rng = np.random.default_rng(seed)
    K = np.stack([mref.intrinsics(height, width, focal=11.0 + 0.3 * t) for t in range(frames)])
    E = mref.random_extrinsics(frames, rng, step=0.15, turn=6.0)
    gt = mref.render_room(E, K[0], height, width)
    pred = (1.0 / gt) * (1 + rng.normal(0, noise, gt.shape)) * 2.0 + 0.1
    return pred.astype(np.float32), gt.astype(np.float32), K, E


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"zbuffer": False, "empty_as_zero": True, "shared_intrinsics": True},
        {"variant": "eq4"},
        {"mask": "target"},
    ],
    ids=["default", "vda_reference", "eq4", "mask_target"],
)
def test_tae_matches_per_pixel_reference(mref, flags):
    metric = TAE(max_depth=20.0, pair_chunk=2, **flags)
    expected = []
    for seed in range(2):
        pred, gt, K, E = _small_scene(mref, seed=seed)
        valid = gt > 3.0  # an extra mask, used by mask="target"
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid),
                      torch.from_numpy(K).float(), torch.from_numpy(E).float(), name=f"s{seed}")
        depth, vmask, *_ = mref.protocol_align(pred, gt, 20.0, valid)
        depth = depth.astype(np.float32).astype(np.float64)  # the metric keeps aligned depth in float32
        expected.append(mref.tae_sequence(
            depth, K.astype(np.float32).astype(np.float64), E.astype(np.float32).astype(np.float64),
            zbuffer=flags.get("zbuffer", True), shared_K=flags.get("shared_intrinsics", False),
            empty_as_zero=flags.get("empty_as_zero", False), eq4=flags.get("variant") == "eq4",
            mask=vmask if flags.get("mask") == "target" else None,
        ))
    # float32 aligned depth: last-bit differences only (a pixel landing elsewhere would be ~1e-3)
    assert float(metric.compute()) == pytest.approx(np.mean(expected), rel=1e-6)
    assert metric.compute() > 0.5


def test_vda_reference_constructor_sets_quirks():
    m = TAE.vda_reference(max_depth=10.0)
    assert (m.zbuffer, m.empty_as_zero, m.shared_intrinsics, m.variant) == (False, True, True, "vda")


def test_zbuffer_keeps_nearest_and_drops_points_behind():
    # frame 0 sees a near pixel and a far pixel that both land on the same target pixel
    K = torch.tensor([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]]).expand(2, 3, 3)
    E = torch.eye(4).expand(2, 4, 4).clone()
    depth = torch.full((2, 3, 3), 5.0)
    errors, empty = tae_errors(depth, K, E, zbuffer=True)
    assert torch.all(errors == 0) and not empty.any()
    # a rotation by 180° about y puts every point behind the target camera
    E[1, 0, 0] = E[1, 2, 2] = -1.0
    errors, empty = tae_errors(depth, K, E, zbuffer=True)
    assert empty.all()
    errors_ref, empty_ref = tae_errors(depth, K, E, zbuffer=False)  # reference: z<0 written, then rejected
    assert empty_ref.all()


def test_empty_directions_counted_or_zero():
    K = torch.tensor([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]]).expand(3, 3, 3)
    E = torch.eye(4).expand(3, 4, 4).clone()
    E[2, 0, 3] = 100.0  # frame 2 is far off to the side: pair (1, 2) sees nothing
    gt = torch.full((3, 3, 3), 4.0)
    gt[1] = 6.0
    pred = 1.0 / gt
    correct, reference = TAE(), TAE(empty_as_zero=True)
    for m in (correct, reference):
        m.update(pred, gt, None, K, E, name="drift")
    assert correct.empty_directions == 2 and correct.directions == 2
    assert reference.directions == 4
    assert float(reference.compute()) == pytest.approx(float(correct.compute()) / 2)


def _perturbed(room, eps):
    depth, K, E = _tensors(room)
    scale = torch.ones(room.frames, 1, 1)
    scale[1::2] += eps  # every other frame is eps too far
    return depth * scale, depth, K, E


def test_consistent_depth_has_near_zero_tae_and_perturbation_scales(room):
    pred, depth, K, E = _perturbed(room, 0.0)
    aligned = TAE(max_depth=20.0)
    aligned.update(3.0 / depth + 0.2, depth, None, K, E)  # exact affine disparity, aligned back
    assert float(aligned.compute()) < 0.05  # pixel rounding only; 100× the relative error

    def tae_of(eps):  # no alignment: measure the geometry alone
        m = TAE("none", pred_kind="depth", max_depth=20.0)
        pred, depth, K, E = _perturbed(room, eps)
        m.update(pred, depth, None, K, E, name=f"eps={eps}")
        return float(m.compute())

    clean, small, large = tae_of(0.0), tae_of(0.02), tae_of(0.04)
    assert clean < 0.05 * small
    assert small == pytest.approx(100 * 0.02, rel=0.05)  # ≈ 100·eps
    assert (large - clean) / (small - clean) == pytest.approx(2.0, rel=0.05)


def test_tcd_matches_kdtree_reference(mref):
    pred, gt, K, E = _small_scene(mref, seed=3, frames=5, height=12, width=15)
    metric = TCD(max_depth=20.0, pair_chunk=2)
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt), None, torch.from_numpy(K).float(),
                  torch.from_numpy(E).float(), name="tcd")
    depth, valid, *_ = mref.protocol_align(pred, gt, 20.0)
    depth = depth.astype(np.float32)
    K32, E32 = K.astype(np.float32).astype(np.float64), E.astype(np.float32).astype(np.float64)
    clouds = []
    for t in range(5):
        pts = mref.backproject_world(depth[t], K32[t], E32[t], np.flatnonzero(valid[t]))
        clouds.append(pts @ E32[0][:3, :3].T + E32[0][:3, 3])  # into frame 0's camera
    expected = np.mean([mref.chamfer(clouds[t], clouds[t + 1]) for t in range(4)])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)


def test_tcd_pruned_equals_brute_and_subsample_is_deterministic(mref):
    pred, gt, K, E = _small_scene(mref, seed=4, frames=4, height=16, width=20)
    args = (torch.from_numpy(pred), torch.from_numpy(gt), None, torch.from_numpy(K).float(), torch.from_numpy(E).float())
    values = {}
    for nn in ("brute", "pruned"):
        m = TCD(max_depth=20.0, nn=nn)
        m.update(*args)
        values[nn] = float(m.compute())
    assert values["pruned"] == pytest.approx(values["brute"], rel=1e-12)
    a, b = TCD(max_depth=20.0, num_points=50, seed=3), TCD(max_depth=20.0, num_points=50, seed=3, chunk_frames=2)
    a.update(*args)
    b.update(*args)
    assert float(a.compute()) == float(b.compute())  # same subsample whatever the chunking
    c = TCD(max_depth=20.0, num_points=50, seed=4)
    c.update(*args)
    assert float(c.compute()) != float(a.compute())


def test_sample_pixels_respects_mask_and_count():
    mask = torch.zeros(3, 5, 6, dtype=torch.bool)
    mask[0, :2] = True  # 12 candidates
    mask[1, 0, :3] = True  # 3 candidates
    idx, sel = sample_pixels(mask, 5, seed=1)
    assert idx.shape == (3, 5)
    assert sel.sum(1).tolist() == [5, 3, 0]
    flat = mask.reshape(3, -1)
    assert torch.all(torch.gather(flat, 1, idx)[sel])
    assert len(set(idx[0].tolist())) == 5  # without replacement


def test_consistent_depth_has_small_tcd_and_perturbation_grows_quadratically(room):
    def tcd_of(eps):
        m = TCD("none", pred_kind="depth", max_depth=20.0, nn="brute")
        pred, depth, K, E = _perturbed(room, eps)
        m.update(pred, depth, None, K, E)
        return float(m.compute())

    clean, small, large = tcd_of(0.0), tcd_of(0.02), tcd_of(0.04)
    assert clean < 0.25 * small  # clean is bounded by the pixel spacing (~0.12 m at 8 m)
    assert 3.5 < (large - clean) / (small - clean) < 4.5  # squared distances: ~4×
    aligned = TCD(max_depth=20.0, nn="brute")
    pred, depth, K, E = _perturbed(room, 0.0)
    aligned.update(3.0 / depth + 0.2, depth, None, K, E)
    assert float(aligned.compute()) == pytest.approx(clean, rel=1e-4)


def test_chamfer_pairs_reports_empty_frames():
    pts = torch.rand(3, 4, 3, dtype=torch.float64)
    sel = torch.ones(3, 4, dtype=torch.bool)
    sel[1] = False
    dist, empty = chamfer_pairs(pts, sel)
    assert empty.tolist() == [True, True] and torch.all(dist == 0)


def test_temporal_metrics_require_cameras():
    with pytest.raises(ValueError, match="TAE needs ground-truth cameras but extrinsics were not given"):
        TAE().update(torch.rand(2, 4, 4), torch.rand(2, 4, 4) + 1, None, torch.eye(3).expand(2, 3, 3), name="x")
    with pytest.raises(ValueError, match=r"intrinsics must be \(2, 3, 3\)"):
        TCD().update(torch.rand(2, 4, 4), torch.rand(2, 4, 4) + 1, None, torch.eye(3).expand(3, 3, 3),
                     torch.eye(4).expand(2, 4, 4))


def test_single_frame_sequence_is_skipped():
    m = TAE()
    m.update(torch.rand(1, 4, 4), torch.rand(1, 4, 4) + 1, None, torch.eye(3)[None], torch.eye(4)[None])
    assert m.sequences_skipped == 1 and torch.isnan(m.compute())
