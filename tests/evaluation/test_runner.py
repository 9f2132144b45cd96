"""evaluate_sequence end to end (windowed inference → crop mapping → metrics), quirk directions,
and the paper's analyses (pose noise, pose probability, length sweeps) as one row per setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_helpers import plane_sequence, write_sequences
from gemdepth.evaluation import evaluate_sequence, get_protocol, prepare_sequence
from gemdepth.evaluation.datamodule import EvalDataModule
from gemdepth.evaluation.lightning import run_benchmark
from gemdepth.evaluation.runner import AnalysisSetting, analysis_settings, model_knobs, sequence_seed
from gemdepth.metrics import TAE

SMALL = {"window": 8, "overlap": 4, "interp": 2}


def _oracle_disparity(rgb: np.ndarray) -> np.ndarray:
    """What :class:`OracleModel` predicts for uint8 frames (its formula, applied directly)."""
    return rgb[..., 0].astype(np.float64) / 255.0 * 2.0 + 0.25


def _protocol_absrel(pred_disp: np.ndarray, gt: np.ndarray, max_depth: float) -> tuple[float, float]:
    """The benchmark's AbsRel and δ1, written out in NumPy (independent of gemdepth.metrics)."""
    valid = (gt > 1e-3) & (gt < max_depth)
    x = np.clip(pred_disp, 1e-3, None)
    a = np.stack([x[valid], np.ones(valid.sum())], -1)
    scale, shift = np.linalg.lstsq(a, 1.0 / gt[valid], rcond=None)[0]
    depth = np.clip(1.0 / np.clip(scale * x + shift, 1e-3, None), 1e-3, max_depth)
    absrel, d1 = [], []
    for f in range(gt.shape[0]):
        v = valid[f]
        if v.any():
            absrel.append(np.mean(np.abs(depth[f][v] - gt[f][v]) / gt[f][v]))
            d1.append(np.mean(np.maximum(depth[f][v] / gt[f][v], gt[f][v] / depth[f][v]) < 1.25))
    return float(np.mean(absrel)), float(np.mean(d1))


def _stripes(t: int, h: int, w: int) -> dict:
    rows = np.arange(h)[:, None] // 3 % 2
    depth = np.broadcast_to((1.5 + 4.0 * rows + 0.01 * np.arange(w)[None]), (t, h, w)).astype(np.float32)
    k = np.tile(np.array([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]], np.float32), (t, 1, 1))
    return {"depth": depth.copy(), "intrinsics": k, "extrinsics": np.tile(np.eye(4, dtype=np.float32), (t, 1, 1))}


def test_oracle_matches_an_independent_protocol_computation(tmp_path, oracle) -> None:
    seqs = {f"seq{i}": plane_sequence(12, 56, 84, seed=i) for i in range(2)}
    write_sequences(tmp_path / "bonn", "bonn", seqs)
    proto = get_protocol("bonn", crop=[14, None, 14, None], sampling={"start": 1, "stop": None, "max_frames": None},
                         inference={"input_size": 42, **SMALL})
    from gemdepth.data import read_sequences

    metrics = proto.build_metrics()
    expected = []
    for seq in read_sequences(tmp_path / "bonn"):
        record = evaluate_sequence(oracle, seq, proto, metrics=metrics)
        gt = seq["depth"][1:, 14:, 14:]
        ref = _protocol_absrel(_oracle_disparity(seq["rgb"][1:, 14:, 14:]), gt, 10.0)
        expected.append(ref)
        assert record["frames"] == 11 and not record["short"]
        assert record["metrics"]["AbsRel"] == pytest.approx(ref[0], abs=2e-6)
        assert record["metrics"]["Delta1"] == pytest.approx(ref[1], abs=1e-9)
        assert record["metrics"]["AbsRel"] < 0.01  # exact up to 8-bit quantisation
    values = metrics.compute()
    assert float(values["AbsRel"]) == pytest.approx(np.mean([e[0] for e in expected]), abs=2e-6)
    assert float(values["Delta1"]) == 1.0


def test_kitti_resize_quirk_misaligns_the_prediction(tmp_path, oracle) -> None:
    write_sequences(tmp_path / "kitti", "kitti", {"drive": _stripes(6, 59, 85)})
    base = get_protocol("kitti", crop=[0, 56, 0, 1242], inference={"input_size": 56, **SMALL})
    from gemdepth.data import read_sequences

    seq = next(iter(read_sequences(tmp_path / "kitti")))
    plain = evaluate_sequence(oracle, seq, base)["metrics"]["AbsRel"]
    quirk = evaluate_sequence(oracle, seq, base.replace(reference_quirks=("kitti_even_crop_resize",)))["metrics"]
    assert plain < 0.01
    assert quirk["AbsRel"] > plain + 0.05  # the 58-row input is squeezed onto 56 ground-truth rows


def test_sintel_uint16_quirk_degrades_a_perfect_prediction(tmp_path, oracle) -> None:
    seq = plane_sequence(6, 28, 42)
    seq["depth"] = (seq["depth"] * 0.9).astype(np.float32)  # ~2-3 m: truncation to whole metres hurts
    write_sequences(tmp_path / "sintel", "sintel", {"alley": seq}, meta={"pass": "clean"})
    base = get_protocol("sintel", inference={"input_size": 28, **SMALL})
    from gemdepth.data import read_sequences

    s = next(iter(read_sequences(tmp_path / "sintel")))
    plain = evaluate_sequence(oracle, s, base)["metrics"]
    ref = evaluate_sequence(oracle, s, base.replace(reference_quirks=("sintel_uint16_depth",)))["metrics"]
    assert plain["AbsRel"] < 0.01 and plain["Delta1"] == 1.0
    assert ref["AbsRel"] > max(0.02, 3 * plain["AbsRel"]) and ref["Delta1"] <= plain["Delta1"]


def test_tae_after_hard_crop_and_the_intrinsics_quirk(tmp_path, oracle) -> None:
    seq = plane_sequence(8, 70, 98, rotate=4.0)
    write_sequences(tmp_path / "scannet", "scannet", {"scene0000_00": seq})
    proto = get_protocol("scannet_tae", sampling={"start": 1, "stop": None, "max_frames": None},
                         inference={"input_size": 70, **SMALL})
    from gemdepth.data import read_sequences

    s = next(iter(read_sequences(tmp_path / "scannet")))
    got = evaluate_sequence(oracle, s, proto)["metrics"]["TAE"]
    # independent route: predict on the whole frame, crop, shift K, score with the TAE metric
    pred = torch.from_numpy(_oracle_disparity(s["rgb"][1:, 8:-8, 11:-11])).float()
    k = torch.from_numpy(s["intrinsics"][1:]).clone()
    k[:, 0, 2] -= 11
    k[:, 1, 2] -= 8
    tae = TAE(max_depth=10.0)
    tae.update(pred, torch.from_numpy(s["depth"][1:, 8:-8, 11:-11]), None, k, torch.from_numpy(s["extrinsics"][1:]))
    assert got == pytest.approx(float(tae.compute()), rel=1e-5)
    assert got < 1.0  # consistent geometry: only quantisation and resampling remain
    quirk = evaluate_sequence(oracle, s, proto.replace(reference_quirks=("tae_uncropped_intrinsics",)))
    assert quirk["metrics"]["TAE"] > got * 1.5  # rays of the wrong pixels under a 4°/frame yaw


def test_tae_empty_direction_quirk_lowers_tae() -> None:
    t, h, w = 3, 12, 16
    gt = torch.full((t, h, w), 2.0)
    gt[1] = 2.2  # frame 1 disagrees with frame 0: pair (0, 1) has an error
    k = torch.tensor([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]]).expand(t, 3, 3).clone()
    e = torch.eye(4).expand(t, 4, 4).clone()
    e[2, 0, 3] = 100.0  # camera 2 is far away: pair (1, 2) has no comparable pixel either way
    pred = 1.0 / gt
    plain = get_protocol("scannet_tae").build_metrics()
    ref = get_protocol("scannet_tae", reference_quirks=("tae_empty_as_zero",)).build_metrics()
    v_plain = float(plain(pred, gt, None, k, e)["TAE"])
    v_ref = float(ref(pred, gt, None, k, e)["TAE"])
    assert v_plain > 0 and v_ref == pytest.approx(v_plain / 2, rel=1e-9)  # 2 of 4 directions empty


def test_analysis_settings_product_and_labels() -> None:
    settings = analysis_settings([0, 0.05], [None, 0.5], [100, None])
    assert len(settings) == 8 and settings[1] == AnalysisSetting() and settings[0].length == 100
    s = AnalysisSetting(0.05, 0.5, 200)
    assert s.label() == "noise 5% · pose prob 50% · 200 frames" and s.key() == "noise0.05_prob0.5_len200"
    assert AnalysisSetting().label() == "" and AnalysisSetting().key() == "base"
    with pytest.raises(ValueError, match="repeat"):
        analysis_settings([0, 0])
    with pytest.raises(ValueError, match="pose_prob"):
        AnalysisSetting(pose_prob=1.5)


def test_model_knobs_set_and_restore_gem(tiny_gemdepth, oracle) -> None:
    gem = tiny_gemdepth.plugins["gem"]
    astt = tiny_gemdepth.plugins["astt"]
    before = (gem.pose_noise, gem.eval_feed_pose, gem.stochastic_inference, gem.pose_prob, astt.stochastic_inference)
    with model_knobs(tiny_gemdepth, pose_noise=0.2, pose_prob=0.5, seed=3):
        assert gem.pose_noise == 0.2 and gem.stochastic_inference and gem.pose_prob == 0.5
        assert gem.pose_clip_prob == 1.0 and gem.pose_frame_prob == 1.0
    with model_knobs(tiny_gemdepth, pose_prob=0.0):
        assert gem.eval_feed_pose is False and not gem.stochastic_inference
    with model_knobs(tiny_gemdepth, stochastic=True):
        assert gem.stochastic_inference and astt.stochastic_inference and gem.pose_prob == before[3]
    assert (gem.pose_noise, gem.eval_feed_pose, gem.stochastic_inference, gem.pose_prob,
            astt.stochastic_inference) == before
    with pytest.raises(ValueError, match="no GEM plug-in"):
        with model_knobs(oracle, pose_noise=0.1):
            pass
    assert sequence_seed(0, "a") != sequence_seed(0, "b") and sequence_seed(1, "a") == sequence_seed(1, "a")


def test_stochastic_inference_quirk_is_seeded(tmp_path, tiny_gemdepth) -> None:
    write_sequences(tmp_path / "bonn", "bonn", {"s": plane_sequence(10, 28, 42)})
    proto = get_protocol("bonn", sampling={"start": 0, "stop": None, "max_frames": None},
                         inference={"input_size": 28, **SMALL})
    from gemdepth.data import read_sequences

    s = prepare_sequence(next(iter(read_sequences(tmp_path / "bonn"))), proto)
    det = [evaluate_sequence(tiny_gemdepth, s, proto)["metrics"]["AbsRel"] for _ in range(2)]
    sto_proto = proto.replace(reference_quirks=("official_stochastic_inference",))
    sto = [evaluate_sequence(tiny_gemdepth, s, sto_proto, seed=7)["metrics"]["AbsRel"] for _ in range(2)]
    assert det[0] == det[1] and sto[0] == sto[1]
    other_seed = [evaluate_sequence(tiny_gemdepth, s, sto_proto, seed=s_)["metrics"]["AbsRel"] for s_ in range(4)]
    assert len(set(other_seed + [det[0]])) > 1  # the random masks / dropout do change the prediction


def test_analyses_give_one_row_per_setting(tmp_path, tiny_gemdepth) -> None:
    write_sequences(tmp_path / "synthetic", "synthetic",
                    {f"scene-{i}": plane_sequence(10, 28, 42, seed=i) for i in range(2)})
    dm = EvalDataModule(str(tmp_path / "synthetic"), name="synth", dataset="synthetic", max_depth=20.0,
                        metrics=["AbsRel", "Delta1", "TAE"], input_size=28, **SMALL,
                        pose_noise=[0.0, 1.0], pose_prob=[None, 0.0], lengths=[6, None],
                        output_dir=str(tmp_path / "out"))
    result = run_benchmark(tiny_gemdepth, dm, method="tiny")
    rows = result["rows"]
    assert len(rows) == 8 and len({r["label"] for r in rows}) == 8
    by_setting = {(r["setting"]["pose_noise"], r["setting"]["pose_prob"], r["setting"]["length"]): r for r in rows}
    for (noise, prob, length), row in by_setting.items():
        assert row["sequences_evaluated"] == 2 and row["frames"] == 2 * (length or 10)
        assert set(row["metrics"]) == {"AbsRel", "Delta1", "TAE"}
    base = by_setting[(0.0, None, None)]["metrics"]["AbsRel"]
    assert by_setting[(1.0, None, None)]["metrics"]["AbsRel"] != base  # noise reaches the depth
    assert by_setting[(0.0, 0.0, None)]["metrics"]["AbsRel"] != base  # so does withholding poses
    assert by_setting[(0.0, None, None)]["label"] == "tiny"
    text = (tmp_path / "out" / "eval_synth.txt").read_text()
    assert text.count("\n") == 2 + 8 and "tiny · noise 100% · pose prob 0% · 6 frames" in text
    assert (tmp_path / "out" / "eval_synth.csv").read_text().count("\n") == 9


def test_needs_poses_and_cameras(tmp_path, oracle) -> None:
    posed = plane_sequence(6, 28, 42)
    free = dict(posed, extrinsics=None)
    write_sequences(tmp_path / "free", "scannet", {"scene": free})
    write_sequences(tmp_path / "posed", "scannet", {"scene": posed})
    from gemdepth.data import read_sequences

    s = next(iter(read_sequences(tmp_path / "free")))
    with pytest.raises(ValueError, match="need ground-truth poses"):
        evaluate_sequence(oracle, s, get_protocol("scannet_tae", sampling={"start": 0}))
    s = next(iter(read_sequences(tmp_path / "posed")))
    proto = get_protocol("scannet", metrics=("AbsRel", "ATE"), sampling={"step": 1},
                         inference={"input_size": 28, **SMALL})
    with pytest.raises(ValueError, match="predicts none"):
        evaluate_sequence(oracle, s, proto)
