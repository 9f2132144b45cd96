"""Two CPU processes (gloo) scoring halves of a set of sequences give the single-process result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gemdepth.metrics import ATE, TAE, TCD, DepthMetrics, F1Score


def _make_metrics() -> dict:
    return {
        "depth": DepthMetrics(max_depth=10.0),
        "tae": TAE(max_depth=10.0),
        "tae_ref_eq4": TAE.vda_reference(max_depth=10.0, variant="eq4"),
        "tcd": TCD(max_depth=10.0, num_points=30),
        "ate": ATE(),
        "f1": F1Score(threshold=0.3, max_depth=10.0, num_points=30, return_components=True),
    }


def _sequences() -> list[dict]:
    """Six small sequences of different lengths; one has an all-invalid frame."""
    gen = torch.Generator().manual_seed(123)
    seqs = []
    for i in range(6):
        frames = 3 + i % 3
        gt = torch.rand(frames, 9, 11, generator=gen) * 6 + 1
        pred = 1.0 / gt + 0.05 * torch.rand(frames, 9, 11, generator=gen)
        if i == 2:
            gt[1] = 0.0
        K = torch.tensor([[9.0, 0, 5], [0, 9.0, 4], [0, 0, 1]]).expand(frames, 3, 3).clone()
        E = torch.eye(4).repeat(frames, 1, 1)
        E[:, :3, 3] = torch.cumsum(0.1 * torch.randn(frames, 3, generator=gen), 0)
        pred_E = E.clone()
        pred_E[:, :3, 3] += 0.02 * torch.randn(frames, 3, generator=gen)
        seqs.append({"pred": pred, "gt": gt, "K": K, "E": E, "pred_E": pred_E, "name": f"seq{i}"})
    return seqs


def _feed(metrics: dict, seqs: list[dict]) -> dict:
    for s in seqs:
        for key, m in metrics.items():
            if key == "ate":
                m.update(s["pred_E"], s["E"], name=s["name"])
            elif key == "f1":
                m.update(s["pred"], s["gt"], None, s["K"], s["E"], pred_extrinsics=s["pred_E"], name=s["name"])
            else:
                m.update(s["pred"], s["gt"], None, s["K"], s["E"], name=s["name"])
    out = {}
    for key, m in metrics.items():
        res = m.compute()
        out[key] = {k: float(v) for k, v in res.items()} if isinstance(res, dict) else float(res)
    out["counts"] = {key: m.counts() for key, m in metrics.items()}  # summed over ranks
    return out


def _worker(rank: int, world: int, rdv: str, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        seqs = _sequences()[rank::world]
        result = _feed(_make_metrics(), seqs)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_equals_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    expected = _feed(_make_metrics(), _sequences())
    mp.spawn(_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["counts"] == expected["counts"]
        assert expected["counts"]["depth"]["frames_dropped"] == 1
        for key, value in expected.items():
            if key == "counts":
                continue
            if isinstance(value, dict):
                for sub, v in value.items():
                    assert got[key][sub] == pytest.approx(v, rel=1e-12, abs=1e-15), (key, sub)
            else:
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
