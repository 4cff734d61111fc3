"""The Nash-MTL / FairGrad fixed-point solver (methods/solvers/fixed_point.py): caps, non-convergence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.methods.fairgrad import fairgrad_weights
from benchmark.methods.nash_mtl import nash_weights
from benchmark.methods.solvers.fixed_point import ACCEPT_RTOL, BargainingError, solve_fixed_point
from tests.method_properties import jacobian


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def test_iteration_cap_and_non_convergence_raise():
    g = jacobian("conflicting", 5, dim=16, seed=0)
    with pytest.raises(BargainingError, match="no convergence in max_iter=1"):
        nash_weights(gram(g), max_iter=1)
    with pytest.raises(BargainingError, match="no convergence in max_iter=2"):
        fairgrad_weights(gram(g), 2.0, max_iter=2)
    # 0 in the convex hull: the iterates run off to infinity; for alpha < 1 they stall with a huge residual.
    opposite = np.array([[1.0, 2.0], [-2.0, -4.0], [0.5, -1.0]])
    with pytest.raises(BargainingError, match="convex hull"):
        nash_weights(gram(opposite))
    with pytest.raises(BargainingError, match="convex hull"):
        fairgrad_weights(gram(opposite), 0.5)
    with pytest.raises(BargainingError, match="convex hull"):
        fairgrad_weights(gram(opposite), 3.0)
    assert 0 < ACCEPT_RTOL < 1e-2
    with pytest.raises(ValueError, match="positive finite"):
        solve_fixed_point(np.eye(2), 1.0, np.array([1.0, -1.0]))


def test_bad_gramians_raise_value_errors():
    for bad, match in ((torch.ones(2, 3), "square"), (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite")):
        with pytest.raises(ValueError, match=f"Nash-MTL: .*{match}"):
            nash_weights(bad)
        with pytest.raises(ValueError, match=f"FairGrad: .*{match}"):
            fairgrad_weights(bad)
    with pytest.raises(ValueError, match="FairGrad: alpha"):
        fairgrad_weights(torch.eye(2), alpha=0.0)

