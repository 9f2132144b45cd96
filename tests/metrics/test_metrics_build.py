"""build_metrics: names, option routing, compute groups, one-call updates of mixed collections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemdepth.metrics import ATE, TAE, AbsRel, DepthMetrics, F1Score, build_metrics, canonical_metric_name


def test_names_and_aliases():
    assert canonical_metric_name("abs_rel") == "AbsRel"
    assert canonical_metric_name("F1") == "F1Score"
    assert canonical_metric_name("delta-1") == "Delta1"
    with pytest.raises(KeyError, match="unknown metric 'SSIM'"):
        canonical_metric_name("SSIM")
    with pytest.raises(ValueError, match="repeat"):
        build_metrics(["absrel", "AbsRel"])


def test_option_routing_and_errors():
    coll = build_metrics(["AbsRel", "TAE", "ATE", "f1"], max_depth=10.0, tae={"variant": "eq4"},
                         F1={"threshold": 0.1, "num_points": 100})
    assert isinstance(coll["AbsRel"], AbsRel) and coll["AbsRel"].align_config.max_depth == 10.0
    assert coll["TAE"].variant == "eq4" and coll["TAE"].align_config.max_depth == 10.0
    assert coll["F1Score"].threshold == 0.1 and coll["F1Score"].num_points == 100
    assert isinstance(coll["ATE"], ATE)
    with pytest.raises(TypeError, match=r"\['num_pointz'\] are accepted by none"):
        build_metrics(["AbsRel", "TCD"], num_pointz=5)
    with pytest.raises(TypeError, match="TAE does not accept option"):
        build_metrics(["TAE"], tae={"threshold": 1.0})
    with pytest.raises(ValueError, match="not in"):
        build_metrics(["AbsRel"], tae={"variant": "eq4"})


def test_depth_family_is_one_compute_group(monkeypatch):
    calls = []
    real = DepthMetrics._update_one
    monkeypatch.setattr(DepthMetrics, "_update_one", lambda self, *a: calls.append(type(self).__name__) or real(self, *a))
    coll = build_metrics(["AbsRel", "Delta1", "RMSE", "TAE"], max_depth=10.0)
    pred, gt = torch.rand(3, 6, 7) + 0.1, torch.rand(3, 6, 7) * 5 + 1
    K, E = torch.eye(3).expand(3, 3, 3), torch.eye(4).expand(3, 4, 4)
    coll.update(pred, gt, None, K, E)
    coll.update(pred * 2, gt, None, K, E)
    assert len(calls) == 2  # once per sequence for the three depth metrics together
    standalone = DepthMetrics(max_depth=10.0)
    standalone.update(pred, gt)
    standalone.update(pred * 2, gt)
    res = coll.compute()
    ref = standalone.compute()
    assert float(res["AbsRel"]) == float(ref["abs_rel"])
    assert float(res["Delta1"]) == float(ref["delta1"])
    assert float(res["RMSE"]) == float(ref["rmse"])


def test_mixed_collection_routes_arguments(mref):
    rng = np.random.default_rng(0)
    frames, height, width = 4, 10, 12
    K = np.stack([mref.intrinsics(height, width, focal=10.0)] * frames)
    E = mref.random_extrinsics(frames, rng, step=0.2, turn=4.0)
    gt = torch.from_numpy(mref.render_room(E, K[0], height, width))
    pred = 1.0 / gt + 0.01 * torch.from_numpy(rng.normal(size=gt.shape))
    pred_E = torch.from_numpy(E).clone()
    pred_E[1:, :3, 3] += 0.05 * torch.from_numpy(rng.normal(size=(frames - 1, 3)))
    K_t, E_t = torch.from_numpy(K), torch.from_numpy(E)
    coll = build_metrics(["AbsRel", "TAE", "ATE", "F1Score"], max_depth=20.0)
    coll.update(pred, gt, None, K_t, E_t, pred_extrinsics=pred_E, name="mixed")
    res = coll.compute()
    singles = {"AbsRel": AbsRel(max_depth=20.0), "TAE": TAE(max_depth=20.0), "ATE": ATE(), "F1Score": F1Score(max_depth=20.0)}
    singles["AbsRel"].update(pred, gt)
    singles["TAE"].update(pred, gt, None, K_t, E_t)
    singles["ATE"].update(pred_E, E_t)
    singles["F1Score"].update(pred, gt, None, K_t, E_t, pred_extrinsics=pred_E)
    for key, metric in singles.items():
        assert float(res[key]) == pytest.approx(float(metric.compute()), rel=1e-12), key
    with pytest.raises(TypeError, match="positionally and by keyword"):
        coll.update(pred, gt, gt_depth=gt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alignment", ["disparity_lstsq", "none"])
def test_metrics_never_modify_their_inputs(dtype, alignment):
    gen = torch.Generator().manual_seed(1)
    gt = (torch.rand(3, 6, 7, generator=gen) * 4 + 1).to(dtype)
    gt[0, 0, 0] = 0.0
    pred = (1.0 / gt.clamp_min(0.5) + 0.01).to(dtype)
    K = torch.tensor([[6.0, 0, 3], [0, 6.0, 2.5], [0, 0, 1]], dtype=dtype).expand(3, 3, 3).clone()
    E = torch.eye(4, dtype=dtype).repeat(3, 1, 1)
    E[:, 0, 3] = torch.tensor([0.0, 0.1, 0.3], dtype=dtype)
    E[2, 1, 3] = 0.2
    valid = gt < 4.5
    inputs = [pred, gt, valid, K, E]
    copies = [x.clone() for x in inputs]
    coll = build_metrics(["DepthMetrics", "TAE", "TCD", "ATE", "F1"], alignment=alignment, max_depth=10.0,
                         pred_kind="depth" if alignment == "none" else "disparity")
    coll.update(pred if alignment != "none" else gt.clone(), gt, valid, K, E, pred_extrinsics=E)
    coll.update(*inputs, pred_extrinsics=E)
    coll.compute()
    for before, after in zip(copies, inputs):
        assert torch.equal(before, after)
