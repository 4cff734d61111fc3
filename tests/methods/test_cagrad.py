"""Tests of CAGrad (docs/methods.md §12): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from benchmark.methods import Needs, cagrad
from benchmark.methods.cagrad import CAGrad, cagrad_dual, cagrad_weights, dual_cone_projection
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "cagrad", Needs.GRAMIAN,
    defaults={"c": 0.4, "rescale": 1, "update_scale": "native", "grad_source": "params", "head_weighting": "own"},
    bad_values=[
        ({"c": -0.1}, "CAGrad: c.*-0.1"),
        ({"c": float("inf")}, "CAGrad: c.*inf"),
        ({"rescale": 3}, "CAGrad: rescale=3"),
        ({"rescale": True}, "CAGrad: rescale=True"),
        ({"update_scale": "libmtl"}, "CAGrad: update_scale='libmtl'"),
        ({"max_iter": 0}, "CAGrad: max_iter.*0"),
        ({"tol": 0.0}, "CAGrad: tol.*0.0"),
    ],
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def cagrad_primal_reference(g: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``argmax_{|d - g_0| <= c |g_0|} min_t <g_t, d>`` by SLSQP over ``(d, s)`` directly: max ``s`` s.t.
    ``G d >= s`` and ``|d - g_0|^2 <= (c |g_0|)^2``. Returns ``(d, min_t <g_t, d>)``."""
    t, dim = g.shape
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    res = minimize(
        lambda z: -z[-1],
        np.concatenate([g0, [np.min(g @ g0)]]),
        jac=lambda z: np.concatenate([np.zeros(dim), [-1.0]]),
        constraints=[
            {"type": "ineq", "fun": lambda z: g @ z[:-1] - z[-1], "jac": lambda z: np.hstack([g, -np.ones((t, 1))])},
            {"type": "ineq", "fun": lambda z: radius**2 - np.sum((z[:-1] - g0) ** 2),
             "jac": lambda z: np.concatenate([-2 * (z[:-1] - g0), [0.0]])},
        ],
        method="SLSQP",
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    d = res.x[:-1]
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-6), res
    return d, float(np.min(g @ d))


def cagrad_direction(g: np.ndarray, c: float, rescale: int = 0, update_scale: str = "mean") -> np.ndarray:
    method = CAGrad(len(g), c=c, rescale=rescale, update_scale=update_scale)
    return method.gramian_weights(gram(g), torch.ones(len(g))).numpy() @ g


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_cagrad_c0_is_the_average_gradient(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=num_tasks)
    for rescale in (0, 1, 2):
        np.testing.assert_array_equal(CAGrad(num_tasks, c=0.0, rescale=rescale).gramian_weights(
            gram(g), torch.ones(num_tasks)).numpy(), np.ones(num_tasks))
        np.testing.assert_allclose(cagrad_direction(g, 0.0, rescale), g.mean(axis=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("c", [0.4, 0.9])
def test_cagrad_maximises_the_worst_improvement_over_the_ball(kind, num_tasks, c):
    g = jacobian(kind, num_tasks, dim=6, seed=40 + num_tasks)
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    scale = (g**2).sum(axis=1).max()
    d = cagrad_direction(g, c)
    value = np.min(g @ d)
    assert value >= np.min(g @ g0) - 1e-12 * scale
    d_ref, value_ref = cagrad_primal_reference(g, c)
    assert value == pytest.approx(value_ref, abs=1e-7 * scale)
    if np.isclose(np.linalg.norm(d - g0), radius, rtol=1e-9, atol=0):
        if kind not in ("badly_scaled", "zero_row"):  # there the maximiser is ill-conditioned or not unique
            np.testing.assert_allclose(d, d_ref, atol=1e-6 * math.sqrt(scale), rtol=0)
    else:  # g_w* = 0: 0 is in the hull and the best worst-case improvement is 0
        assert kind == "zero_row"
        assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9)
        assert value == pytest.approx(0.0, abs=1e-12 * scale) and value_ref <= 1e-7 * scale


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", ["random", "conflicting", "collinear", "badly_scaled"])
def test_cagrad_without_rescale_moves_exactly_to_the_ball_boundary(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=50 + num_tasks)
    g0 = g.mean(axis=0)
    for c in (0.1, 0.4, 1.5):
        d = cagrad_direction(g, c)
        assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-9)
        assert np.min(g @ d) >= np.min(g @ g0) - 1e-12 * (g**2).sum(axis=1).max()


def test_cagrad_degenerate_hull_projects_the_average_on_the_dual_cone():
    g = jacobian("zero_row", 5, dim=6, seed=25)
    g0 = g.mean(axis=0)
    assert np.min(g @ g0) < 0
    d = cagrad_direction(g, 0.4)
    assert np.all(g @ d >= -1e-12) and np.linalg.norm(d - g0) < 0.4 * np.linalg.norm(g0)
    coeffs = dual_cone_projection(g @ g.T, np.full(5, 0.2))
    np.testing.assert_allclose(coeffs @ g, d, atol=1e-12)
    # the projection is the nearest point of the cone: moving along any feasible direction does not get closer
    rng = np.random.default_rng(0)
    for x in rng.standard_normal((200, 6)):
        if np.all(g @ x >= 0):
            assert np.linalg.norm(x - g0) >= np.linalg.norm(d - g0) - 1e-12


def test_cagrad_hand_example_scales_and_rescales():
    g = np.array([[1.0, 0.0], [0.0, 1.0]])  # symmetric: g_w* = g_0, d = (1 + c) g_0
    for rescale, divisor in ((0, 1.0), (1, 1.16), (2, 1.4)):
        np.testing.assert_allclose(cagrad_direction(g, 0.4, rescale), [0.7 / divisor] * 2, rtol=1e-9)
        w = CAGrad(2, rescale=rescale).gramian_weights(gram(g), torch.ones(2)).numpy()
        np.testing.assert_allclose(w, [1.4 / divisor] * 2, rtol=1e-9)  # native scale = T x the mean
        w_sum = CAGrad(2, rescale=rescale, update_scale="sum").gramian_weights(gram(g), torch.ones(2)).numpy()
        np.testing.assert_array_equal(w, w_sum)
    np.testing.assert_allclose(cagrad_direction(np.array([[3.0, 4.0]]), 0.4), [4.2, 5.6], rtol=1e-12)


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_cagrad_dual_reaches_the_optimum_of_a_grid_and_the_1d_solve(num_tasks):
    g = jacobian("conflicting", num_tasks, seed=7)
    m = g @ g.T / (g @ g.T).diagonal().mean()
    w, iterations = cagrad_dual(m, 0.4)
    assert 0 < iterations <= 1000 and abs(w.sum() - 1) < 1e-12 and np.all(w >= 0)
    radius = 0.4 * math.sqrt(m.mean())
    value = w @ m.mean(axis=1) + radius * math.sqrt(w @ m @ w)
    samples = np.random.default_rng(1).dirichlet(np.ones(num_tasks) * 0.3, size=20000)
    grid = samples @ m.mean(axis=1) + radius * np.sqrt(np.einsum("ni,ij,nj->n", samples, m, samples))
    assert value <= grid.min() + 1e-12
    two = m[:2, :2]
    w2, _ = cagrad_dual(two, 0.4)
    xs = np.linspace(0.0, 1.0, 200_001)
    b2, r2 = two.mean(axis=1), 0.4 * math.sqrt(two.mean())
    curve = xs * b2[0] + (1 - xs) * b2[1] + r2 * np.sqrt(
        xs**2 * two[0, 0] + 2 * xs * (1 - xs) * two[0, 1] + (1 - xs) ** 2 * two[1, 1])
    assert abs(w2[0] - xs[curve.argmin()]) <= 1e-5


def test_cagrad_solver_failure_and_iteration_cap_raise(monkeypatch):
    g = jacobian("conflicting", 5, seed=5)
    with pytest.raises(RuntimeError, match="CAGrad: SLSQP failed.*Iteration limit"):
        CAGrad(5, max_iter=1).gramian_weights(gram(g), torch.ones(5))
    with pytest.raises(RuntimeError, match="CAGrad: the 1-D solver failed"):
        CAGrad(2, max_iter=1, tol=1e-15).gramian_weights(gram(g[:2]), torch.ones(2))

    class Failed:
        success, status, message, nit, x = False, 8, "Positive directional derivative for linesearch", 3, None

    monkeypatch.setattr(cagrad, "minimize", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match="Positive directional derivative"):
        cagrad_weights(gram(g), 0.4)
    method = CAGrad(3)
    with pytest.raises(RuntimeError):
        method.gramian_weights(gram(g[:3]), torch.ones(3))
    assert method.last_weights is None


def test_cagrad_stats():
    method = CAGrad(3)
    assert method.stats() == {}
    method.gramian_weights(gram(jacobian("conflicting", 3, seed=3)), torch.ones(3))
    assert set(method.stats()) == {"weight_0", "weight_1", "weight_2", "solver_iterations"}

