"""Exact nearest-neighbour searches against SciPy's KD-tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from gemdepth.metrics.neighbours import mutual_nearest_sq_dist, nearest_sq_dist, nearest_sq_dist_pruned


def test_brute_force_batched_masked_chunked_matches_kdtree():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(3, 300, 3, generator=gen, dtype=torch.float64) * 4 + 50  # far from the origin
    ref = torch.randn(3, 410, 3, generator=gen, dtype=torch.float64) * 4 + 50
    mask = torch.rand(3, 410, generator=gen) > 0.3
    dist, idx = nearest_sq_dist(query, ref, mask, chunk_elems=40_000, return_index=True)  # several blocks
    for b in range(3):
        keep = np.flatnonzero(mask[b].numpy())
        d, i = cKDTree(ref[b].numpy()[keep]).query(query[b].numpy())
        np.testing.assert_allclose(dist[b].numpy(), d**2, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(idx[b].numpy(), keep[i])


def test_empty_reference_gives_inf():
    dist = nearest_sq_dist(torch.rand(2, 5, 3), torch.rand(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isinf(dist).all()
    assert torch.isinf(nearest_sq_dist_pruned(torch.rand(5, 3), torch.rand(0, 3))).all()


def _surface(n: int, seed: int) -> torch.Tensor:
    """Points on a wavy sheet (depth-map-like)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 6 - 3
    z = 5 + 0.5 * torch.sin(2 * xy[:, :1]) * torch.cos(xy[:, 1:])
    return torch.cat([xy, z], 1)


@pytest.mark.parametrize("block_size", [100, 257])
def test_pruned_search_is_exact(block_size):
    query, ref = _surface(3000, 1), _surface(2500, 2) + 0.01
    dist = nearest_sq_dist_pruned(query, ref, block_size=block_size)
    d, _ = cKDTree(ref.numpy()).query(query.numpy())
    np.testing.assert_allclose(dist.numpy(), d**2, rtol=1e-12, atol=1e-14)


def test_pruned_radius_search_decides_threshold_exactly():
    query, ref = _surface(2000, 3), _surface(1500, 4)
    radius = 0.05
    dist = nearest_sq_dist_pruned(query, ref, radius=radius, block_size=128)
    d, _ = cKDTree(ref.numpy()).query(query.numpy())
    np.testing.assert_array_equal(dist.numpy() < radius**2, d < radius)
    inside = d < radius
    np.testing.assert_allclose(dist.numpy()[inside], d[inside] ** 2, rtol=1e-12)
    assert 0.1 < inside.mean() < 0.9


def test_mutual_search_matches_kdtree_both_ways():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(2, 250, 3, generator=gen, dtype=torch.float64) + 20
    b = torch.randn(2, 330, 3, generator=gen, dtype=torch.float64) + 20
    a_mask, b_mask = torch.rand(2, 250, generator=gen) > 0.2, torch.rand(2, 330, generator=gen) > 0.4
    d_ab, d_ba = mutual_nearest_sq_dist(a, b, a_mask, b_mask, chunk_elems=30_000)
    for k in range(2):
        am, bm = a_mask[k].numpy(), b_mask[k].numpy()
        ref_ab, _ = cKDTree(b[k].numpy()[bm]).query(a[k].numpy()[am])
        ref_ba, _ = cKDTree(a[k].numpy()[am]).query(b[k].numpy()[bm])
        np.testing.assert_allclose(d_ab[k].numpy()[am], ref_ab**2, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(d_ba[k].numpy()[bm], ref_ba**2, rtol=1e-12, atol=1e-13)
        assert np.isinf(d_ab[k].numpy()[~am]).all() and np.isinf(d_ba[k].numpy()[~bm]).all()
