"""``gemdepth bench`` on a mini model: the table, and FLOPs that include attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gemdepth.bench import count_flops, main, parse_size

REPO = Path(__file__).resolve().parents[1]
MINI_VDA = REPO / "tests" / "configs" / "official_mini_vda.yaml"


class _Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x)


def test_flop_count_includes_sdpa() -> None:
    b, h, length, d = 2, 3, 40, 8
    total, attn = count_flops(_Attention(), torch.randn(b, h, length, d), torch.autocast("cpu", enabled=False))
    assert attn == total == 4 * b * h * length * length * d  # QKᵀ and AV, 2 FLOPs per MAC


def test_bench_runs_on_a_mini_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--presets", str(MINI_VDA), "--sizes", "28x42", "--frames", "2", "4", "--device", "cpu",
            "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "ms/clip" in table and "attn GFLOPs/frame" in table and "official_mini_vda" in table
    rows = json.loads(out.read_text())
    assert [r["frames"] for r in rows] == [2, 4]
    for row in rows:
        assert row["ms_per_clip"] > 0 and row["peak_mem_mib"] > 0
        assert row["params_m"] == pytest.approx(0.995073, abs=1e-6)
        assert 0 < row["attn_gflops_per_frame"] < row["gflops_per_frame"]
    # the encoder and per-frame head cost the same per frame at any T; only temporal attention grows
    assert rows[1]["gflops_per_frame"] == pytest.approx(rows[0]["gflops_per_frame"], rel=0.01)


def test_bad_size_is_rejected() -> None:
    with pytest.raises(Exception, match="multiples of 14"):
        parse_size("100x100")
