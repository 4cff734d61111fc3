"""The min-norm solvers of MGDA (methods/solvers/min_norm.py) against brute force, SLSQP and the KKT conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods.mgda import MGDA
from benchmark.methods.solvers import min_norm
from benchmark.methods.solvers.min_norm import (
    ITERATIVE_SOLVERS,
    SOLVERS,
    min_norm_frank_wolfe,
    min_norm_pgd,
    min_norm_qp,
    project_simplex,
    two_point,
)
from tests.method_properties import (
    KINDS,
    assert_common_descent,
    assert_min_norm_kkt,
    assert_on_simplex,
    brute_force_min_norm,
    jacobian,
    slsqp_min_norm,
)

TASK_COUNTS = (2, 3, 5)


SOLVER_TOL = {"pgd": 1e-4, "frank_wolfe": 1e-2, "qp": 1e-9}


def gram(g: np.ndarray) -> np.ndarray:
    return g @ g.T


@pytest.mark.parametrize(
    ("x1", "x2", "gamma"),
    [
        ((1.0, 0.0), (0.0, 1.0), 0.5),
        ((2.0, 0.0), (0.0, 1.0), 0.2),
        ((3.0, 0.0), (-1.0, 0.0), 0.25),
        ((1.0, 0.0), (1.0, 1.0), 1.0),
        ((1.0, 1.0), (1.0, 0.0), 0.0),
        ((1.0, 2.0), (1.0, 2.0), 1.0),
        ((0.0, 0.0), (0.0, 0.0), 1.0),
    ],
)
def test_two_point_hand_cases(x1, x2, gamma):
    x1, x2 = np.array(x1), np.array(x2)
    got, cost = two_point(x1 @ x1, x1 @ x2, x2 @ x2)
    assert got == pytest.approx(gamma, abs=1e-12)
    point = got * x1 + (1 - got) * x2
    assert cost == pytest.approx(point @ point, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_two_point_is_the_clipped_closed_form_and_the_grid_minimum(seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((2, 4)) * rng.uniform(0.1, 3.0, size=(2, 1))
    a, b, c = x1 @ x1, x1 @ x2, x2 @ x2
    gamma, cost = two_point(a, b, c)
    assert gamma == pytest.approx(min(max((c - b) / (a + c - 2 * b), 0.0), 1.0), abs=1e-12)
    grid = np.linspace(0.0, 1.0, 100_001)
    values = np.sum((grid[:, None] * x1 + (1 - grid[:, None]) * x2) ** 2, axis=1)
    assert cost == pytest.approx(values.min(), rel=1e-8, abs=1e-12)
    assert abs(gamma - grid[values.argmin()]) <= 2e-5


def test_two_point_official_clip_and_flat_guard():
    assert two_point(1.0, 2.0, 5.0, official_clip=True)[0] == 0.999
    assert two_point(5.0, 2.0, 1.0, official_clip=True)[0] == 0.001
    gamma, cost = two_point(1.0, 1.0 - 1e-15, 1.0 + 1e-15)
    assert 0.0 <= gamma <= 1.0 and cost == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "expected"),
    [([0.5, 0.5, 0.5], [1 / 3] * 3), ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0]), ([1.0, 1.0, -5.0], [0.5, 0.5, 0.0])],
)
def test_project_simplex_hand_cases(y, expected):
    np.testing.assert_allclose(project_simplex(y), expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_project_simplex_is_the_euclidean_projection(seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(6) * 3
    x = project_simplex(y)
    assert_on_simplex(x)
    others = rng.dirichlet(np.ones(6), size=200)
    assert np.all((others - x) @ (y - x) <= 1e-12)
    np.testing.assert_allclose(project_simplex(x), x, atol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_min_norm_kkt_and_brute_force(solver, kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=num_tasks)
    m = gram(g)
    alpha, _ = SOLVERS[solver](m)
    tol = SOLVER_TOL[solver]
    assert_on_simplex(alpha)
    assert_min_norm_kkt(m, alpha, tol)
    d = alpha @ g
    scale = m.diagonal().max()
    assert np.all(g @ d >= d @ d - tol * scale)
    d_ref = brute_force_min_norm(m) @ g
    assert np.linalg.norm(d - d_ref) <= tol * math.sqrt(scale)


@pytest.mark.parametrize("kind", ["random", "conflicting"])
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_pgd_gives_a_common_descent_direction(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=10 + num_tasks)
    alpha, _ = min_norm_pgd(gram(g))
    assert_common_descent(g, alpha @ g, rtol=1e-3)


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_brute_force_reference_agrees_with_slsqp(num_tasks):
    m = gram(jacobian("conflicting", num_tasks, seed=7))
    exact, slsqp = brute_force_min_norm(m), slsqp_min_norm(m)
    assert exact @ m @ exact <= slsqp @ m @ slsqp + 1e-12
    assert exact @ m @ exact == pytest.approx(slsqp @ m @ slsqp, rel=1e-6)


def test_grid_search_confirms_three_task_solution():
    g = jacobian("conflicting", 3, seed=3)
    m = gram(g)
    step = np.linspace(0.0, 1.0, 801)
    a1, a2 = np.meshgrid(step, step)
    grid = np.stack([a1.ravel(), a2.ravel(), 1 - a1.ravel() - a2.ravel()], axis=1)
    grid = grid[grid[:, 2] >= 0]
    best = np.einsum("ni,ij,nj->n", grid, m, grid).min()
    for solver in SOLVERS.values():
        alpha, _ = solver(m)
        assert best - 1e-3 * m.diagonal().max() <= alpha @ m @ alpha <= best + 1e-12


@pytest.mark.parametrize("solver", ITERATIVE_SOLVERS)
def test_iteration_cap_is_honoured(solver, monkeypatch):
    m = gram(jacobian("conflicting", 5, seed=5))
    _, uncapped = SOLVERS[solver](m)
    assert uncapped > 3
    line_searches = []
    monkeypatch.setattr(min_norm, "two_point", lambda *a, **k: line_searches.append(1) or two_point(*a, **k))
    _, capped = SOLVERS[solver](m, max_iter=3)
    assert capped == 3
    assert len(line_searches) == 3 + 5 * 4 // 2
    monkeypatch.undo()
    _, never_converges = SOLVERS[solver](m, max_iter=7, tol=0.0)
    assert never_converges == 7
    mgda = MGDA(5, solver=solver, max_iter=3)
    mgda.gramian_weights(torch.as_tensor(m), torch.ones(5, dtype=torch.float64))
    assert mgda.stats()["solver_iterations"] <= 3


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_and_two_tasks(solver):
    alpha, it = SOLVERS[solver](np.array([[4.0]]))
    assert alpha.tolist() == [1.0] and it == 0
    alpha, it = SOLVERS[solver](np.array([[4.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(alpha, [0.2, 0.8])
    assert it == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_solution_invariant_to_global_scale(solver):
    m = gram(jacobian("random", 5, seed=1))
    alpha, _ = SOLVERS[solver](m)
    for c in (1e-12, 1e12):
        np.testing.assert_allclose(SOLVERS[solver](c * m)[0], alpha, atol=1e-10)


def test_solvers_reject_non_finite_and_non_square():
    with pytest.raises(ValueError, match="non-finite"):
        min_norm_pgd(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        min_norm_frank_wolfe(np.ones((2, 3)))


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("num_tasks", [3, 5])
def test_qp_solver_meets_kkt_where_pgd_stops_early(seed, num_tasks):
    """Badly scaled Gramians (row norms 1e-4..1e2): the exact QP gives a common descent direction every time."""
    g = jacobian("badly_scaled", num_tasks, seed=100 + seed)
    m = gram(g)
    alpha, _ = min_norm_qp(m)
    assert_on_simplex(alpha)
    assert_min_norm_kkt(m, alpha, 1e-9)
    d = alpha @ g
    assert np.all(g @ d >= d @ d * (1 - 1e-6) - 1e-12 * m.diagonal().max())
    best = brute_force_min_norm(m)
    assert alpha @ m @ alpha <= best @ m @ best * (1 + 1e-9) + 1e-15

