"""Protocol presets, the eval YAML configs, frame sampling, crops and quirk flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from gemdepth.evaluation import PROTOCOLS, QUIRKS, Crop, FrameSampling, Protocol, get_protocol, quirk_lines
from gemdepth.evaluation.protocol import Box

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "eval"

# The documented numbers of the Video Depth Anything benchmark (eval.py, eval_tae.py,
# dataset_extract/*.py), written out independently of the presets:
# name: (dataset, max depth, crop box on the dataset's frame size, first/last source frame,
#        step, sampling, frames, max sequences, metrics)
AD = ("AbsRel", "Delta1")
DOCUMENTED = {
    "sintel": ("sintel", 70.0, (436, 1024), (0, 0, 436, 1024), 0, 99, 1, "position", 100, None, AD),
    "kitti": ("kitti", 80.0, (375, 1242), (0, 0, 374, 1242), 0, 109, 1, "position", 110, None, AD),
    "kitti_500": ("kitti", 80.0, (375, 1242), (0, 0, 374, 1242), 0, 499, 1, "position", 500, None, AD),
    "bonn": ("bonn", 10.0, (480, 640), (0, 0, 480, 640), 30, 139, 1, "index", 110, None, AD),
    "bonn_500": ("bonn", 10.0, (480, 640), (0, 0, 480, 640), 0, 499, 1, "index", 500, None, AD),
    "scannet": ("scannet", 10.0, (480, 640), (8, 11, 464, 618), 0, 267, 3, "index", 90, 100, AD),
    "scannet_500": ("scannet", 10.0, (480, 640), (8, 11, 464, 618), 0, 499, 1, "index", 500, 100, AD),
    "scannet_tae": ("scannet", 10.0, (480, 640), (8, 11, 464, 618), 10, 179, 1, "index", 170, 20, ("TAE",)),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_presets_carry_the_documented_numbers(name: str) -> None:
    ds, max_depth, frame, box, first, last, step, by, frames, max_seq, metrics = DOCUMENTED[name]
    p = PROTOCOLS[name]
    assert (p.dataset, p.max_depth, p.min_depth) == (ds, max_depth, 1e-3)
    assert p.crop.box(*frame) == Box(*box)
    sel = p.sampling.select(list(range(1000)))  # source frames 0..999 stored in order
    assert (sel[0], sel[-1], len(sel)) == (first, last, frames)
    assert np.all(np.diff(sel) == step) and p.sampling.by == by
    assert p.sampling.requested == frames
    assert p.max_sequences == max_seq and p.metrics == metrics
    assert (p.inference.input_size, p.inference.window, p.inference.overlap, p.inference.interp) == (518, 32, 10, 8)
    assert p.inference.precision == "32" and p.alignment == "disparity_lstsq" and p.reference_quirks == ()
    assert p.crop_input == (name != "scannet_tae")


def _datamodule_from_yaml(path: Path, extra: list[str] | None = None):
    """Parse an eval config the way LightningCLI does (``data`` as a subclass of LightningDataModule)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_args(["--config", str(path), *(extra or [])])
    return parser.instantiate_classes(cfg).data


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_yaml_configs_build_the_preset(name: str) -> None:
    from gemdepth.evaluation.datamodule import EvalDataModule

    dm = _datamodule_from_yaml(CONFIG_DIR / f"{name}.yaml")
    assert isinstance(dm, EvalDataModule)
    assert dm.protocol == PROTOCOLS[name]
    assert dm.path == f"shards/eval/{PROTOCOLS[name].dataset}"
    assert len(dm.settings) == 1 and dm.settings[0].is_default


def test_yaml_overrides_reach_the_protocol_and_the_analyses() -> None:
    dm = _datamodule_from_yaml(
        CONFIG_DIR / "scannet_500.yaml",
        ["--data.init_args.pose_noise", "[0, 0.05, 0.2]", "--data.init_args.max_frames", "100",
         "--data.init_args.reference_quirks", "[all]"],
    )
    assert [s.pose_noise for s in dm.settings] == [0.0, 0.05, 0.2]
    assert dm.protocol.sampling.max_frames == 100
    assert "official_stochastic_inference" in dm.protocol.reference_quirks
    assert "sintel_uint16_depth" not in dm.protocol.reference_quirks  # 'all' = those that apply


def test_every_config_file_is_a_known_protocol() -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == sorted(DOCUMENTED)
    for path in CONFIG_DIR.glob("*.yaml"):
        init = yaml.safe_load(path.read_text())["data"]["init_args"]
        assert init["name"] == path.stem


def test_frame_sampling_by_position_and_by_index() -> None:
    indices = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15]  # frame 8 missing (a converter dropped it)
    by_pos = FrameSampling(1, 7, 2, "position")
    assert by_pos.select(indices).tolist() == [1, 3, 5]
    by_idx = FrameSampling(6, 14, 2, "index")  # source frames 6, 8, 10, 12 → 8 is missing
    assert [indices[p] for p in by_idx.select(indices)] == [6, 10, 12]
    assert FrameSampling(0, None, 1, "index", max_frames=3).select(indices).tolist() == [0, 1, 2]
    assert FrameSampling().select(indices, limit=4).tolist() == [0, 1, 2, 3]
    assert FrameSampling(0, 500, 1).requested == 500 and FrameSampling(0, 500, 1, max_frames=90).requested == 90
    with pytest.raises(ValueError, match="step"):
        FrameSampling(step=0)
    with pytest.raises(ValueError, match="position"):
        FrameSampling(by="time")  # type: ignore[arg-type]


def test_crop_boxes_follow_numpy_slicing() -> None:
    a = np.arange(480 * 640).reshape(480, 640)
    for crop in (Crop(8, -8, 11, -11), Crop(0, 374, 0, 1242), Crop(0, None, 5, None), Crop(-10, None, 0, 3)):
        box = crop.box(480, 640)
        rows, cols = box.slices
        expect = a[crop.top : crop.bottom, crop.left : crop.right]
        np.testing.assert_array_equal(a[rows, cols], expect)
    with pytest.raises(ValueError, match="leaves no pixel"):
        Crop(500, None, 0, None).box(480, 640)
    with pytest.raises(ValueError, match=r"\[top, bottom, left, right\]"):
        Crop.from_list([1, 2, 3])


def test_quirk_names_are_checked_and_expanded() -> None:
    with pytest.raises(ValueError, match="unknown reference quirk 'tae_magic'"):
        get_protocol("bonn", reference_quirks=("tae_magic",))
    with pytest.raises(ValueError, match="applies to sintel only"):
        get_protocol("bonn", reference_quirks=("sintel_uint16_depth",))
    sintel = get_protocol("sintel", reference_quirks=("all",))
    assert {"sintel_uint16_depth", "sintel_depth_factor_650", "official_stochastic_inference"} <= set(
        sintel.reference_quirks)
    assert "kitti_even_crop_resize" not in sintel.reference_quirks
    implied = get_protocol("sintel", reference_quirks=("sintel_depth_factor_650",))
    assert implied.quirk("sintel_uint16_depth")


def test_tae_quirks_become_metric_options() -> None:
    plain = get_protocol("scannet_tae").build_metrics()["TAE"]
    assert (plain.zbuffer, plain.empty_as_zero, plain.shared_intrinsics) == (True, False, False)
    ref = get_protocol("scannet_tae", reference_quirks=("tae_last_write_wins", "tae_empty_as_zero",
                                                        "tae_shared_intrinsics")).build_metrics()["TAE"]
    assert (ref.zbuffer, ref.empty_as_zero, ref.shared_intrinsics) == (False, True, True)
    assert ref.align_config.max_depth == 10.0 and ref.align_config.min_depth == 1e-3


def test_metric_options_and_roundtrip() -> None:
    p = get_protocol("bonn_500", metrics=("AbsRel", "Delta1", "TAE", "ATE"),
                     metric_options={"TAE": {"variant": "eq4"}, "TCD": {"num_points": 10}})
    m = p.build_metrics()
    assert set(m.keys()) == {"AbsRel", "Delta1", "TAE", "ATE"} and m["TAE"].variant == "eq4"
    assert p.needs_cameras and p.needs_predicted_cameras
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(KeyError, match="unknown evaluation protocol"):
        get_protocol("nyu")


def test_docs_list_every_quirk() -> None:
    doc = (REPO / "docs" / "eval_protocol.md").read_text()
    for line in quirk_lines():
        assert line in doc, f"docs/eval_protocol.md lacks the line: {line}"
    assert len(quirk_lines()) == len(QUIRKS)
