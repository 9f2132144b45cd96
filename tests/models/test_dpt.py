"""DPT head: shapes, official parameter layout, hooks at the Table-7 positions."""

from __future__ import annotations

import pytest
import torch

from gemdepth.models.dpt import DPTHead


def _features(n: int, h: int, w: int, c: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(n, h * w, c), torch.randn(n, c)) for _ in range(4)]


def _head(**kw: object) -> DPTHead:
    head = DPTHead(16, features=32, out_channels=[8, 16, 24, 32], **kw).eval()  # type: ignore[arg-type]
    torch.nn.init.constant_(head.scratch.output_conv2[2].bias, 1.0)  # keep the final ReLU open
    return head


def test_output_shape_and_layout() -> None:
    head = _head()
    with torch.no_grad():
        out = head(_features(2, 3, 5), 3, 5)
    assert out.shape == (2, 1, 42, 70)
    keys = set(head.state_dict())
    assert "scratch.refinenet4.resConfUnit1.conv1.weight" not in keys  # never run by the official head
    assert "scratch.refinenet3.resConfUnit1.conv1.weight" in keys
    assert {"resize_layers.0.weight", "resize_layers.3.weight", "scratch.layer4_rn.weight", "scratch.output_conv2.2.bias"} <= keys
    assert "resize_layers.2.weight" not in keys  # identity at the patch grid


def test_hooks_see_the_documented_maps_and_change_the_output() -> None:
    head = _head()
    feats = _features(2, 3, 5)
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str, scale: float):
        def hook(x: torch.Tensor) -> torch.Tensor:
            seen[name] = tuple(x.shape)
            return x * scale

        return hook

    with torch.no_grad():
        base = head(feats, 3, 5)
        same = head(feats, 3, 5, hooks={"mid": record("mid", 1.0), "late": record("late", 1.0)})
        changed = head(feats, 3, 5, hooks={"mid": record("mid", 0.0)})
    assert seen["mid"] == (2, 32, 3, 5)  # path_4 at the patch grid
    assert seen["late"] == (2, 32, 24, 40)  # path_1, 8× the patch grid, before output_conv1
    torch.testing.assert_close(same, base)
    assert (changed - base).abs().max() > 1e-4


def test_hook_changing_shape_is_rejected() -> None:
    head = _head()
    with pytest.raises(ValueError, match="'late' hook changed the feature map shape"):
        head(_features(1, 2, 2), 2, 2, hooks={"late": lambda x: x[..., :1]})


def test_clstoken_readout_uses_class_token() -> None:
    head = _head(use_clstoken=True)
    feats = _features(1, 2, 3)
    other = [(t, c + 1.0) for t, c in feats]
    with torch.no_grad():
        assert (head(feats, 2, 3) - head(other, 2, 3)).abs().max() > 1e-5
    assert "readout_projects.0.0.weight" in head.state_dict()


def test_batchnorm_variant_has_bn_layers() -> None:
    head = _head(use_bn=True)
    assert "scratch.refinenet1.resConfUnit1.bn1.running_mean" in head.state_dict()
