"""Tests of Nash-MTL (docs/methods.md §13): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.nash_mtl import NashMTL, nash_weights
from tests.method_properties import KINDS, alpha_fair_optimum, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "nash_mtl", Needs.GRAMIAN,
    defaults={"update_weights_every": 1, "warm_start": True, "max_norm": 1.0, "max_iter": 100, "tol": 1e-10,
        "max_solver_failures": 10, "grad_source": "params", "head_weighting": "own"},
    bad_values=[
        ({"update_weights_every": 0}, "NashMTL: update_weights_every.*0"),
        ({"update_weights_every": 1.5}, "NashMTL: update_weights_every.*1.5"),
        ({"warm_start": 1}, "NashMTL: warm_start.*1"),
        ({"max_norm": 0.0}, "NashMTL: max_norm.*0.0"),
        ({"max_norm": float("inf")}, "NashMTL: max_norm.*inf"),
        ({"max_iter": 0}, "NashMTL: max_iter.*0"),
        ({"max_iter": True}, "NashMTL: max_iter.*True"),
        ({"tol": 0.0}, "NashMTL: tol.*0.0"),
        ({"tol": "1e-10"}, "NashMTL: tol.*'1e-10'"),
        ({"max_solver_failures": -1}, "NashMTL: max_solver_failures.*-1"),
        ({"grad_source": "rep"}, "grad_source='rep'"),
    ],
    raw_jacobians=False,
)


TASK_COUNTS = (2, 3, 5)


SOLVABLE = tuple(k for k in KINDS if k != "zero_row")


KKT_TOL = 1e-8  # on max_t |w_t^(1/alpha) (M w)_t - 1|; the solver stops at a backward error of 1e-10


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def nash(g: np.ndarray, **kwargs) -> np.ndarray:
    return nash_weights(gram(g), **kwargs)[0].numpy()


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", SOLVABLE)
@pytest.mark.parametrize("seed", range(3))
def test_nash_bargaining_condition_holds(kind, num_tasks, seed):
    g = jacobian(kind, num_tasks, dim=16, seed=seed)
    alpha, solve = nash_weights(gram(g))
    alpha = alpha.numpy()
    assert np.all(alpha > 0) and alpha.dtype == np.float64
    # Checked on the Jacobian: <d, g_t> alpha_t = 1 for d = alpha @ G, so |d|^2 = sum_t alpha_t <d, g_t> = T.
    d = alpha @ g
    np.testing.assert_allclose((g @ d) * alpha, np.ones(num_tasks), rtol=0, atol=KKT_TOL)
    assert solve.residual <= KKT_TOL and solve.iterations <= 20
    np.testing.assert_allclose(d @ d, num_tasks, rtol=1e-8)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", SOLVABLE)
def test_nash_scale_equivariance(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=16, seed=7)
    alpha = nash(g)
    c = np.logspace(-3, 3, num_tasks)[::-1] * np.array([1.0, 7.0, 0.3, 2.0, 11.0])[:num_tasks]
    np.testing.assert_allclose(nash(c[:, None] * g), alpha / c, rtol=1e-9)
    np.testing.assert_allclose(nash(1e6 * g), alpha / 1e6, rtol=1e-9)  # a global scale: alpha / c as well


def test_nash_hand_examples_and_two_task_closed_form():
    # Orthogonal gradients: alpha_t = 1 / |g_t| (docs/methods.md §13 hand case); d = (1, 1, 1).
    g = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.25]])
    np.testing.assert_allclose(nash(g), [1.0, 0.5, 4.0], rtol=1e-12)
    np.testing.assert_allclose(nash(g) @ g, [1.0, 1.0, 1.0], rtol=1e-12)
    # g_1 = (1, 0), g_2 = (1, 1): cos = 1/sqrt(2). T = 2 closed form on the unit-diagonal problem: x_1 = x_2 =
    # 1/sqrt(1 + cos), alpha_t = x_t / |g_t|. Check: alpha = (0.7654, 0.5412), d = (1.3066, 0.5412),
    # <d, g_1> = 1.3066 = 1/alpha_1, <d, g_2> = 1.8478 = 1/alpha_2.
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    x = 1.0 / math.sqrt(1.0 + 1.0 / math.sqrt(2.0))
    np.testing.assert_allclose(nash(g), [x, x / math.sqrt(2.0)], rtol=1e-12)
    for kind in SOLVABLE:
        for seed in range(3):
            g = jacobian(kind, 2, dim=8, seed=seed)
            norms = np.linalg.norm(g, axis=1)
            cos = g[0] @ g[1] / (norms[0] * norms[1])
            np.testing.assert_allclose(nash(g), 1.0 / (norms * math.sqrt(1.0 + cos)), rtol=1e-9)
    # One task: alpha = 1 / |g|, a unit step.
    np.testing.assert_allclose(nash(np.array([[3.0, 4.0]])), [0.2], rtol=1e-14)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", ("random", "conflicting", "badly_scaled"))
def test_nash_matches_an_independent_solve_of_the_nash_product(kind, num_tasks):
    """The paper's problem: argmax_{|d| <= 1} sum_t log <g_t, d>, whose solution is d_nash / sqrt(T)."""
    g = jacobian(kind, num_tasks, dim=16, seed=num_tasks)
    if kind == "badly_scaled":  # SLSQP over d copes with norms from 1e-2 to 30, not the generator's 1e-4 to 1e2
        g = g / np.linalg.norm(g, axis=1, keepdims=True) * np.array([1e-2, 1.0, 30.0, 0.1, 5.0])[:num_tasks, None]
    d_star = alpha_fair_optimum(g, 1.0)
    np.testing.assert_allclose(nash(g) @ g / math.sqrt(num_tasks), d_star, atol=2e-6, rtol=0)


def test_nash_update_every_reuses_and_warm_start_saves_iterations():
    rng = np.random.default_rng(0)
    g = jacobian("conflicting", 5, dim=16, seed=3)
    grams = [gram(g + 0.05 * rng.standard_normal(g.shape)) for _ in range(7)]
    losses = torch.ones(5, dtype=torch.float64)
    every = NashMTL(5, update_weights_every=3, max_norm=None)
    for step, m in enumerate(grams):
        anchor = grams[3 * (step // 3)]  # solved on steps 0, 3, 6 and reused in between
        out = every.gramian_weights(m, losses).numpy()
        np.testing.assert_allclose(out, nash_weights(anchor)[0].numpy(), rtol=1e-9)
        assert (every.stats()["solver_iterations"] > 0) == (step % 3 == 0)

    cold, warm = NashMTL(5, warm_start=False, max_norm=None), NashMTL(5, max_norm=None)
    cold_its, warm_its = [], []
    for m in grams:
        np.testing.assert_allclose(warm.gramian_weights(m, losses).numpy(), cold.gramian_weights(m, losses).numpy(),
                                   rtol=1e-9)
        cold_its.append(cold.stats()["solver_iterations"])
        warm_its.append(warm.stats()["solver_iterations"])
    assert sum(warm_its[1:]) < sum(cold_its[1:]), (warm_its, cold_its)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_nash_clipping_is_clip_grad_norm_of_the_update(num_tasks):
    g = jacobian("random", num_tasks, dim=16, seed=1)
    alpha = nash(g)
    losses = torch.ones(num_tasks, dtype=torch.float64)
    for max_norm in (1.0, 0.1):
        w = NashMTL(num_tasks, max_norm=max_norm).gramian_weights(gram(g), losses).numpy()
        reference = torch.tensor(alpha @ g, requires_grad=True)
        reference.grad = reference.detach().clone()
        torch.nn.utils.clip_grad_norm_([reference], max_norm)
        np.testing.assert_allclose(w @ g, reference.grad.numpy(), rtol=1e-12)
        assert abs(np.linalg.norm(w @ g) - max_norm) <= 1e-5 * max_norm  # |d| = sqrt(T) > max_norm: always clipped
    method = NashMTL(num_tasks, max_norm=10.0)
    np.testing.assert_allclose(method.gramian_weights(gram(g), losses).numpy(), alpha, rtol=1e-12)
    assert method.stats()["clip_coef"] == 1.0
    np.testing.assert_allclose(NashMTL(num_tasks, max_norm=None).gramian_weights(gram(g), losses).numpy(), alpha,
                               rtol=1e-12)

