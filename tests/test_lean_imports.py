"""What an inference process imports: no Triton without an accelerator, no kornia for a forward."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gemdepth.geometry import quat_to_rotmat, rotmat_to_quat

PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    from gemdepth.models import build_model
    from torch.utils._triton import has_triton_package
    torch.manual_seed(0)
    model = build_model({"host": "vda", "encoder": {"embed_dim": 64, "depth": 4, "num_heads": 2,
                         "layer_idx": [0, 1, 2, 3]}, "head": {"features": 32, "out_channels": [32, 32, 64, 64]},
                         "plugins": [{"name": "gem"}, {"name": "astt"}]}).eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 3, 42, 56))
    state = {"triton": "triton" in sys.modules, "kornia": "kornia" in sys.modules,
             "has_triton": has_triton_package(), "poses": out.pose_enc is not None}
    try:
        import triton  # noqa: F401  # still importable on request
        state["import_triton"] = True
    except ImportError:
        state["import_triton"] = False
    print(json.dumps(state))
    """
)


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_cpu_forward_imports_neither_triton_nor_kornia() -> None:
    """Without an accelerator Triton cannot run, so the model's imports keep it (76 MiB resident) out
    and PyTorch sees "no Triton", as on its CPU build; ``import triton`` still works on request, and
    ``GEMDEPTH_IMPORT_TRITON=1`` restores PyTorch's own behaviour. A GEM forward needs no kornia."""
    if torch.cuda.is_available():
        pytest.skip("an accelerator is present: Triton stays as PyTorch imports it")
    installed = importlib.util.find_spec("triton") is not None
    state = _probe(GEMDEPTH_IMPORT_TRITON="")
    assert state["poses"] and not state["kornia"]
    assert not state["triton"] and not state["has_triton"]
    assert state["import_triton"] == installed
    if installed:
        kept = _probe(GEMDEPTH_IMPORT_TRITON="1")
        assert kept["triton"] and kept["has_triton"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quaternion_to_matrix_is_kornias_bit_for_bit(dtype: torch.dtype) -> None:
    """The hand-written conversion (kornia stays out of inference imports) equals kornia's, after
    the same normalisation, and round-trips through ``rotmat_to_quat``."""
    from kornia.geometry.conversions import quaternion_to_rotation_matrix

    torch.manual_seed(0)
    quat = torch.randn(4, 250, 4, dtype=dtype) * 3  # not unit: both divide by the norm
    unit = quat / quat.norm(dim=-1, keepdim=True)
    ref = quaternion_to_rotation_matrix(torch.cat([unit[..., 3:], unit[..., :3]], dim=-1))
    rot = quat_to_rotmat(quat)
    assert torch.equal(rot, ref)
    eye = torch.eye(3, dtype=dtype).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye, atol=1e-5, rtol=0)
    canonical = torch.where(unit[..., 3:] < 0, -unit, unit)
    torch.testing.assert_close(rotmat_to_quat(rot), canonical, atol=1e-5, rtol=0)
