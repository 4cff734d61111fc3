"""Tests of Aligned-MTL (docs/methods.md §14): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.aligned_mtl import AlignedMTL, aligned_mtl_basis, aligned_mtl_weights
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "aligned_mtl", Needs.GRAMIAN,
    defaults={"scale_mode": "min", "update_scale": "native", "rank_tol": None, "grad_source": "params",
              "head_weighting": "own"},
    bad_values=[
        ({"scale_mode": "mean"}, "AlignedMTL: scale_mode='mean'"),
        ({"update_scale": "T"}, "AlignedMTL: update_scale='T'"),
    ],
    raw_steps=2,
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_aligned_gradients_have_equal_singular_values(kind, num_tasks, scale_mode):
    g = jacobian(kind, num_tasks, dim=16, seed=60 + num_tasks)
    m = gram(g)
    basis, kept = aligned_mtl_basis(m, scale_mode)
    b, lam = basis.numpy(), kept.numpy()
    vals, vecs = np.linalg.eigh(m.numpy())
    on = vals > vals.max() * num_tasks * np.finfo(np.float32).eps  # the official rank threshold
    rank = int(on.sum())
    assert len(lam) == rank and np.all(np.diff(lam) <= 0)
    assert rank == np.linalg.matrix_rank(g) or kind == "badly_scaled"  # there the 1e-8 task falls below it
    np.testing.assert_allclose(lam, vals[on][::-1], rtol=0, atol=1e-14 * vals.max())
    sigma_sq = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}[scale_mode]
    aligned = b @ g
    singular = np.linalg.svd(aligned, compute_uv=False)
    np.testing.assert_allclose(singular[:rank], math.sqrt(sigma_sq), rtol=1e-6)
    assert np.all(singular[rank:] <= 1e-6 * math.sqrt(sigma_sq))
    # B M B^T = sigma^2 V_R V_R^T, the projector onto the kept eigenvectors
    projector = vecs[:, on] @ vecs[:, on].T
    np.testing.assert_allclose(b @ m.numpy() @ b.T, sigma_sq * projector, atol=1e-6 * sigma_sq)
    if rank == num_tasks and scale_mode == "min":  # full rank: the aligned Gramian is lambda_min I
        np.testing.assert_allclose(aligned @ aligned.T, lam[-1] * np.eye(num_tasks), atol=1e-6 * lam[-1])
    w = AlignedMTL(num_tasks, scale_mode=scale_mode).gramian_weights(m, torch.ones(num_tasks)).numpy()
    np.testing.assert_allclose(w @ g, aligned.sum(axis=0), rtol=1e-12, atol=1e-12 * np.abs(aligned).max())


def test_aligned_mtl_hand_examples():
    torch.testing.assert_close(aligned_mtl_weights(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))),
                               torch.tensor([0.5, 1.0], dtype=torch.float64))
    s = 1 / math.sqrt(3)  # M = [[2, 1], [1, 2]]: eigenvalues 3 (1, 1) and 1 (1, -1); B 1 = (1, 1)/sqrt(3)
    torch.testing.assert_close(aligned_mtl_weights(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)),
                               torch.tensor([s, s], dtype=torch.float64))
    m = torch.diag(torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64))
    base = torch.tensor([1 / 3, 1 / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(aligned_mtl_weights(m, "min"), base)
    torch.testing.assert_close(aligned_mtl_weights(m, "median"), 2 * base)
    torch.testing.assert_close(aligned_mtl_weights(m, "rmse"), math.sqrt(14 / 3) * base)
    # an even rank takes the lower median, as the official torch.median
    torch.testing.assert_close(aligned_mtl_weights(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)),
                                                   "median"), torch.tensor([0.5, 1.0], dtype=torch.float64))
    # rank 1: B = v v^T (sigma^2 = lambda), a zero Gramian: B = 0
    g = np.array([[1.0, 2.0], [2.0, 4.0]])
    basis, kept = aligned_mtl_basis(gram(g))
    assert len(kept) == 1
    torch.testing.assert_close(basis, torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64) / 5)
    assert aligned_mtl_weights(torch.zeros(3, 3, dtype=torch.float64)).abs().max() == 0
    method = AlignedMTL(3, update_scale="mean")
    torch.testing.assert_close(method.gramian_weights(m, torch.ones(3)), base / 3)
    assert method.stats()["rank"] == 3.0 and method.stats()["gramian_condition"] == pytest.approx(9.0)



def test_aligned_mtl_counts_the_tasks_its_rank_threshold_drops():
    """A task whose gradient is 1e-4 of another's (eigenvalue ratio ~1e-8 < 2 eps(float32)): the official rank
    threshold drops it and counts it; ``rank_tol=1e-12`` keeps it, so every task improves."""
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1e-4, 0.0]], dtype=torch.float64)
    official = AlignedMTL(2)
    official.gramian_weights(g @ g.T, torch.ones(2))
    assert official.stats()["rank"] == 1 and official.stats()["rank_dropped"] == 1
    kept = AlignedMTL(2, rank_tol=1e-12)
    d = kept.gramian_weights(g @ g.T, torch.ones(2)) @ g
    assert kept.stats()["rank"] == 2 and kept.stats()["rank_dropped"] == 0
    assert torch.all(g @ d > 0)
    with pytest.raises(ValueError, match="AlignedMTL: rank_tol.*1.5"):
        AlignedMTL(2, rank_tol=1.5)
