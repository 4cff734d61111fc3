"""Tests of FairGrad (docs/methods.md §18): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from benchmark.methods import Needs
from benchmark.methods.fairgrad import FairGrad, fairgrad_weights
from benchmark.methods.nash_mtl import nash_weights
from tests.method_properties import KINDS, alpha_fair_optimum, brute_force_min_norm, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "fairgrad", Needs.GRAMIAN,
    defaults={"alpha": 1.0, "update_scale": "native", "max_norm": 1.0, "max_iter": 100, "tol": 1e-10,
        "max_solver_failures": 10, "grad_source": "params", "head_weighting": "own"},
    bad_values=[
        ({"alpha": 0.0}, "FairGrad: alpha.*0.0"),
        ({"alpha": -1.0}, "FairGrad: alpha.*-1.0"),
        ({"alpha": float("nan")}, "FairGrad: alpha.*nan"),
        ({"alpha": True}, "FairGrad: alpha.*True"),
        ({"update_scale": "libmtl"}, "FairGrad: update_scale='libmtl'"),
        ({"max_norm": -1.0}, "FairGrad: max_norm.*-1.0"),
        ({"max_solver_failures": 0.5}, "FairGrad: max_solver_failures.*0.5"),
        ({"head_weighting": "both"}, "head_weighting='both'"),
    ],
    raw_jacobians=False,
)


TASK_COUNTS = (2, 3, 5)


SOLVABLE = tuple(k for k in KINDS if k != "zero_row")


ALPHAS = (0.5, 1.0, 2.0, 5.0, 10.0)


KKT_TOL = 1e-8  # on max_t |w_t^(1/alpha) (M w)_t - 1|; the solver stops at a backward error of 1e-10


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def nash(g: np.ndarray, **kwargs) -> np.ndarray:
    return nash_weights(gram(g), **kwargs)[0].numpy()


def fair(g: np.ndarray, alpha: float, **kwargs) -> np.ndarray:
    return fairgrad_weights(gram(g), alpha, **kwargs)[0].numpy()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", SOLVABLE)
def test_fairgrad_equation_holds(kind, num_tasks, alpha):
    """Ban & Ji eq. 4: G G^T w = w^(-1/alpha), checked on the Jacobian: <g_t, d> = w_t^(-1/alpha) > 0."""
    g = jacobian(kind, num_tasks, dim=16, seed=num_tasks)
    w, solve = fairgrad_weights(gram(g), alpha)
    w = w.numpy()
    assert np.all(w > 0)
    d = w @ g
    np.testing.assert_allclose((g @ d) * w ** (1.0 / alpha), np.ones(num_tasks), rtol=0, atol=KKT_TOL)
    assert solve.residual <= KKT_TOL


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", SOLVABLE)
def test_fairgrad_alpha_one_is_nash_mtl(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=16, seed=11)
    np.testing.assert_allclose(fair(g, 1.0), nash(g), rtol=1e-8)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", SOLVABLE)
def test_fairgrad_small_alpha_tends_to_equal_weights(kind, num_tasks):
    """alpha -> 0: the utilitarian sum, i.e. equal weights, when the mean gradient improves every task
    (w_t = u_t^(-alpha) -> 1): non-negative unit gradients here."""
    g = np.abs(jacobian(kind, num_tasks, dim=16, seed=5))
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(fair(g, 1e-3), np.ones(num_tasks), atol=5e-3)
    assert np.abs(fair(g, 1e-3) - 1.0).max() < np.abs(fair(g, 1e-2) - 1.0).max()


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", ("random", "conflicting"))
def test_fairgrad_large_alpha_tends_to_max_min_fairness(kind, num_tasks):
    """alpha -> inf: max-min fairness, whose direction on the unit ball is MGDA's min-norm point (computed here
    by brute force). Checked where every task is active at the max-min point (M^-1 1 > 0); where some task is
    not, its weight tends to 0 like c^alpha and the solve needs ever more iterations (see FairGrad's docstring)."""
    g = jacobian(kind, num_tasks, dim=16, seed=6)
    assert np.all(np.linalg.solve(g @ g.T, np.ones(num_tasks)) > 0)
    v = brute_force_min_norm(g @ g.T) @ g
    gaps = []
    for alpha in (100.0, 1e3):
        d = fair(g, alpha) @ g
        gaps.append(1.0 - d @ v / (np.linalg.norm(d) * np.linalg.norm(v)))
    assert gaps[1] <= 1e-7 and gaps[1] < gaps[0] / 10, gaps


def test_fairgrad_hand_examples_and_scale_law():
    # Orthogonal gradients: M_tt w_t = w_t^(-1/alpha), so w_t = |g_t|^(-2 alpha / (1 + alpha)).
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(fair(g, 2.0), [1.0, 4.0 ** (-2.0 / 3.0)], rtol=1e-12)
    np.testing.assert_allclose(fair(g, 0.5), [1.0, 4.0 ** (-1.0 / 3.0)], rtol=1e-12)
    # Two unit gradients at 60 degrees: by symmetry w (1 + 1/2) = w^(-1/alpha), w = (2/3)^(alpha / (1 + alpha)).
    g = np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
    for alpha in ALPHAS:
        np.testing.assert_allclose(fair(g, alpha), np.full(2, (2.0 / 3.0) ** (alpha / (1.0 + alpha))), rtol=1e-12)
    # A global scale M -> s M gives w -> s^(-alpha / (1 + alpha)) w; per-task scales do not commute for alpha != 1.
    g = jacobian("conflicting", 3, dim=16, seed=2)
    for alpha in ALPHAS:
        np.testing.assert_allclose(fair(10.0 * g, alpha), 100.0 ** (-alpha / (1.0 + alpha)) * fair(g, alpha),
                                   rtol=1e-9)
    c = np.array([1.0, 10.0, 0.1])
    assert not np.allclose(fair(c[:, None] * g, 2.0), fair(g, 2.0) / c, rtol=1e-3)


@pytest.mark.parametrize("alpha", (0.5, 2.0, 5.0))
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", ("random", "conflicting", "collinear"))
def test_fairgrad_matches_the_official_least_squares_and_the_utility_optimum(kind, num_tasks, alpha):
    g = jacobian(kind, num_tasks, dim=16, seed=20 + num_tasks)
    m = g @ g.T
    w = fair(g, alpha)
    # The official formulation: least_squares on M w - w^(-1/alpha) from 1/T, bounds [0, inf).
    ref = least_squares(lambda x: m @ x - x ** (-1.0 / alpha), np.full(num_tasks, 1.0 / num_tasks),
                        jac=lambda x: m + np.diag(x ** (-1.0 / alpha - 1.0) / alpha), bounds=(0.0, np.inf),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10_000)
    np.testing.assert_allclose(w, ref.x, rtol=1e-6)
    # The paper's problem over d, max_{|d| <= 1} sum_t u_t^(1-alpha)/(1-alpha), is concave: d/|d| is its optimum
    # iff the utility gradient sum_t u_t^(-alpha) g_t (evaluated on the Jacobian) is parallel to it ...
    d = w @ g
    d = d / np.linalg.norm(d)
    ascent = (g @ d) ** (-alpha) @ g
    assert 1.0 - ascent @ d / np.linalg.norm(ascent) <= 1e-12
    # ... and, where SLSQP copes (alpha > 1: a bounded utility slope at u -> 0), it finds the same point.
    if alpha > 1:
        np.testing.assert_allclose(d, alpha_fair_optimum(g, alpha), atol=2e-6, rtol=0)


def test_fairgrad_update_scale_and_clipping():
    g = jacobian("random", 3, dim=16, seed=4)
    w = fair(g, 2.0)
    losses = torch.ones(3, dtype=torch.float64)
    for scale, factor in (("native", 3.0), ("sum", 3.0), ("mean", 1.0)):
        method = FairGrad(3, alpha=2.0, update_scale=scale, max_norm=None)
        np.testing.assert_allclose(method.gramian_weights(gram(g), losses).numpy(), factor * w, rtol=1e-12)
    clipped = FairGrad(3, alpha=2.0).gramian_weights(gram(g), losses).numpy()
    norm = np.linalg.norm(3.0 * w @ g)
    np.testing.assert_allclose(clipped, 3.0 * w * min(1.0, 1.0 / (norm + 1e-6)), rtol=1e-12)

