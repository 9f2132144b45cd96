"""Sequence preparation: frame sampling, crops, intrinsics, ground-truth quirks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemdepth.evaluation import SequenceError, get_protocol, prepare_sequence
from gemdepth.evaluation.protocol import Crop, FrameSampling
from gemdepth.evaluation.runner import map_to_ground_truth, truncate_sample
from gemdepth.evaluation.sequence import SINTEL_VDA_FACTOR, sintel_reference_depth


def _seq(corpus: str, t: int = 12, h: int = 30, w: int = 40, indices=None, meta=None) -> dict:
    rng = np.random.default_rng(0)
    k = np.tile(np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]], np.float32), (t, 1, 1))
    return {
        "rgb": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "depth": rng.uniform(0.5, 12.0, (t, h, w)).astype(np.float32),
        "valid": rng.random((t, h, w)) > 0.1,
        "intrinsics": k,
        "extrinsics": np.tile(np.eye(4, dtype=np.float32), (t, 1, 1)),
        "meta": {"corpus": corpus, "sequence": "s1", "frame_indices": list(indices or range(100, 100 + t)),
                 "depth_kind": "metric", **(meta or {})},
    }


def test_crop_and_sampling_match_manual_slicing() -> None:
    seq = _seq("scannet", indices=list(range(0, 24, 2)))  # source frames 0, 2, …, 22
    proto = get_protocol("scannet", crop=[3, -2, 5, -4], sampling={"start": 4, "stop": 20, "step": 6, "max_frames": 5})
    out = prepare_sequence(seq, proto)
    pos = [2, 5, 8]  # source frames 4, 10, 16
    assert out["frame_indices"] == [4, 10, 16] and out["frames"] == 3 and out["requested_frames"] == 3
    np.testing.assert_array_equal(out["rgb"], seq["rgb"][pos][:, 3:-2, 5:-4])
    np.testing.assert_array_equal(out["depth"], seq["depth"][pos][:, 3:-2, 5:-4])
    np.testing.assert_array_equal(out["valid"], seq["valid"][pos][:, 3:-2, 5:-4])
    np.testing.assert_allclose(out["intrinsics"][:, 0, 2], 20 - 5)
    np.testing.assert_allclose(out["intrinsics"][:, 1, 2], 15 - 3)
    assert out["input_box"] == out["gt_box"] == [3, 5, 25, 31]


def test_hard_crop_keeps_the_whole_input_frame() -> None:
    out = prepare_sequence(_seq("scannet", indices=range(12)), get_protocol("scannet_tae", sampling={"start": 2}))
    assert out["rgb"].shape[1:3] == (30, 40) and out["depth"].shape[1:] == (14, 18)
    assert out["input_box"] == [0, 0, 30, 40] and out["gt_box"] == [8, 11, 14, 18]
    assert out["frames"] == 10 and out["requested_frames"] == 170  # a short sequence


def test_uncropped_intrinsics_quirk() -> None:
    seq = _seq("scannet", indices=range(12))
    fixed = prepare_sequence(seq, get_protocol("scannet_tae", sampling={"start": 0}))
    ref = prepare_sequence(seq, get_protocol("scannet_tae", sampling={"start": 0},
                                             reference_quirks=("tae_uncropped_intrinsics",)))
    np.testing.assert_allclose(ref["intrinsics"][:, :2, 2], [[20, 15]] * 12)
    np.testing.assert_allclose(fixed["intrinsics"][:, :2, 2], [[20 - 11, 15 - 8]] * 12)


def test_kitti_quirk_boxes() -> None:
    seq = _seq("kitti", h=41, w=53)
    proto = get_protocol("kitti", crop=[0, 37, 0, 60])  # GT crop 37 rows x 53 cols
    plain = prepare_sequence(seq, proto)
    assert plain["input_box"] == plain["gt_box"] == [0, 0, 37, 53]
    ref = prepare_sequence(seq, proto.replace(reference_quirks=("kitti_even_crop_resize",)))
    assert ref["input_box"] == [0, 0, 40, 52] and ref["gt_box"] == [0, 0, 37, 53]
    assert ref["rgb"].shape[1:3] == (40, 52)


def test_sintel_reference_depth_emulates_the_uint16_cast() -> None:
    d = np.array([0.4, 0.999, 1.0, 7.9, 69.99, 70000.0, 1.0e6, 3.0e9, np.inf, np.nan], np.float32)
    with np.errstate(invalid="ignore"):
        expect = d[:5].astype(np.uint16).astype(np.float32)
    got = sintel_reference_depth(d)
    np.testing.assert_array_equal(got[:5], expect)
    np.testing.assert_array_equal(got[5:], [70000 % 65536, 1_000_000 % 65536, 0, 0, 0])
    np.testing.assert_allclose(sintel_reference_depth(d[:5], SINTEL_VDA_FACTOR), expect * 650 / 65535, rtol=1e-6)


def test_sintel_quirks_change_the_ground_truth() -> None:
    seq = _seq("sintel", meta={"pass": "clean"})
    seq["depth"][0, 0, :3] = [0.7, 250.0, 7000.0]
    plain = prepare_sequence(seq, get_protocol("sintel"))
    trunc = prepare_sequence(seq, get_protocol("sintel", reference_quirks=("sintel_uint16_depth",)))
    scaled = prepare_sequence(seq, get_protocol("sintel", reference_quirks=("sintel_depth_factor_650",)))
    np.testing.assert_array_equal(plain["depth"], seq["depth"][:12])
    np.testing.assert_array_equal(trunc["depth"], np.floor(seq["depth"][:12]))
    assert trunc["depth"][0, 0, 0] == 0  # < 1 m: invalid
    # with VDA's factor the 70 m cap acts at ~7056 m: 250 m and 7000 m become "valid" ground truth
    valid_plain = (plain["depth"] > 1e-3) & (plain["depth"] < 70)
    valid_scaled = (scaled["depth"] > 1e-3) & (scaled["depth"] < 70)
    assert not valid_plain[0, 0, 1:3].any() and valid_scaled[0, 0, 1:3].all()


def test_bad_sequences_raise_clear_errors() -> None:
    with pytest.raises(SequenceError, match="belongs to corpus 'bonn'.*evaluates 'kitti'"):
        prepare_sequence(_seq("bonn"), get_protocol("kitti"))
    with pytest.raises(SequenceError, match="pass=None.*expects pass='clean'.*pass_name=clean"):
        prepare_sequence(_seq("sintel"), get_protocol("sintel"))
    rel = _seq("bonn", meta={"depth_kind": "relative-disparity"})
    with pytest.raises(SequenceError, match="metric ground-truth depth"):
        prepare_sequence(rel, get_protocol("bonn"))
    with pytest.raises(SequenceError, match="no frame selected"):
        prepare_sequence(_seq("bonn", indices=range(500, 512)), get_protocol("bonn"))


def test_map_to_ground_truth_crops_and_resizes() -> None:
    t, h, w = 2, 12, 16
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pred = torch.stack([xx * 3 + yy, xx - yy])
    k = torch.tensor([[10.0, 0, 7.5], [0, 10.0, 5.5], [0, 0, 1]]).expand(t, 3, 3)
    out, k_out = map_to_ground_truth(pred, k, [0, 0, h, w], [2, 3, 8, 9])
    torch.testing.assert_close(out, pred[:, 2:10, 3:12])
    torch.testing.assert_close(k_out[:, :2, 2], torch.tensor([[4.5, 3.5]] * t))
    same, _ = map_to_ground_truth(pred, None, [0, 0, h, w], [0, 0, h, w])
    assert same is pred
    # resize 12x16 -> 9x20 (half-pixel centres): a linear ramp is reproduced exactly inside
    big, k_big = map_to_ground_truth(pred, k, [0, 0, h, w], [0, 0, 9, 20])
    src_x = (torch.arange(20) + 0.5) * w / 20 - 0.5
    src_y = (torch.arange(9) + 0.5) * h / 9 - 0.5
    expect = src_x[None, None, :] * 3 + src_y[None, :, None]
    inner = (slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(big[0][inner[1:]], expect[0][inner[1:]], atol=1e-4, rtol=0)
    torch.testing.assert_close(k_big[0, 0, 0], torch.tensor(10.0 * 20 / 16))


def test_truncate_sample() -> None:
    sample = prepare_sequence(_seq("bonn", indices=range(12)), get_protocol("bonn", sampling={"start": 0}))
    short = truncate_sample(sample, 5)
    assert short["frames"] == 5 and short["depth"].shape[0] == 5 and short["frame_indices"] == list(range(5))
    longer = truncate_sample(sample, 50)  # a sweep length beyond the sequence: short, asked 50
    assert longer["frames"] == 12 and longer["requested_frames"] == 50
    assert truncate_sample(sample, None) == sample
    assert FrameSampling(0, None).requested is None and Crop().box(3, 4).shape == (3, 4)
