"""Reading checkpoints safely and the strict key adapter."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gemdepth.weights.common import CheckpointError, KeyAdapter, load_state_file

STATE = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(4)}


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_reads_safetensors_and_pth(tmp_path: Path) -> None:
    save_file(STATE, tmp_path / "w.safetensors")
    torch.save(STATE, tmp_path / "w.pth")
    _assert_same(load_state_file(tmp_path / "w.safetensors"), STATE)
    _assert_same(load_state_file(tmp_path / "w.pth"), STATE)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "module"])
def test_unwraps_common_wrappers(tmp_path: Path, wrapper: str) -> None:
    torch.save({wrapper: STATE, "epoch": 3, "config": {"lr": 1e-4}}, tmp_path / "w.pt")
    _assert_same(load_state_file(tmp_path / "w.pt"), STATE)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_state_file(tmp_path / "missing.pth")


def test_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type '.npz'"):
        load_state_file(tmp_path / "w.npz")


class Trojan:
    """An arbitrary Python object: weights_only loading must refuse to rebuild it."""

    def __init__(self) -> None:
        self.payload = "would run code on load"


def test_pickled_objects_are_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": STATE, "extra": Trojan()}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "weights_only" in message and "will not unpickle" in message
    assert "safetensors" in message  # says how to convert


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors is not a readable"):
        load_state_file(path)


def test_no_tensors(tmp_path: Path) -> None:
    torch.save({"epoch": 1}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_state_file(tmp_path / "w.pth")


def _targets(**shapes: tuple[int, ...]) -> dict[str, torch.Size]:
    return {k.replace("__", "."): torch.Size(v) for k, v in shapes.items()}


def test_adapter_first_rule_wins_and_unused_are_recorded() -> None:
    adapter = KeyAdapter(
        "toy",
        rules=[(r"^old\.special\.", "new.renamed."), (r"^old\.", "new.")],
        unused=[r"^old\.mask_token$"],
    )
    state = {"old.special.w": torch.zeros(2), "old.x": torch.zeros(3), "old.mask_token": torch.zeros(1)}
    result = adapter.adapt_report(state, {"new.renamed.w": torch.Size([2]), "new.x": torch.Size([3])})
    assert set(result.state) == {"new.renamed.w", "new.x"}
    assert result.unused == ["old.mask_token"]
    assert adapter.adapt(state, {"new.renamed.w": (2,), "new.x": (3,)}).keys() == result.state.keys()


def test_adapter_lists_every_kind_of_misfit() -> None:
    adapter = KeyAdapter("toy", rules=[(r"^m\.", "")])
    state = {"m.a": torch.zeros(2), "m.b": torch.zeros(3), "m.gone": torch.zeros(1), "x.y": torch.zeros(1)}
    targets = {"a": torch.Size([2]), "b": torch.Size([4]), "c": torch.Size([1])}
    with pytest.raises(CheckpointError) as info:
        adapter.adapt(state, targets)
    msg = str(info.value)
    assert "checkpoint keys with no place in the model (2)" in msg
    assert "m.gone → gone (the model has no such key)" in msg and "x.y (no rule)" in msg
    assert "shape mismatches (1)" in msg and "m.b [3] → b expects [4]" in msg
    assert "model keys the checkpoint does not provide (1)" in msg  # c (b is listed as a mismatch)
    assert "toy adapter" in msg


def test_adapter_allow_missing_and_truncated_listing() -> None:
    adapter = KeyAdapter("toy", rules=[(r"^(.*)$", r"\1")])
    targets = collections.OrderedDict((f"fresh.{i}", torch.Size([1])) for i in range(30))
    targets["kept"] = torch.Size([1])
    result = adapter.adapt_report({"kept": torch.zeros(1)}, targets, allow_missing=[r"^fresh\."])
    assert len(result.missing_allowed) == 30 and set(result.state) == {"kept"}
    with pytest.raises(CheckpointError) as info:
        adapter.adapt({"kept": torch.zeros(1)}, targets)
    assert "(30)" in str(info.value) and "… and 10 more" in str(info.value)


def test_adapter_rejects_collisions() -> None:
    adapter = KeyAdapter("toy", rules=[(r"^(a|b)$", "c")])
    with pytest.raises(CheckpointError, match="both map to c"):
        adapter.adapt({"a": torch.zeros(1), "b": torch.zeros(1)}, {"c": torch.Size([1])})
