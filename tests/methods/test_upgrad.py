"""Tests of UPGrad (docs/methods.md §17): the shared asserts, then its defining properties."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from benchmark.methods import Needs, create
from benchmark.methods.solvers import dual_cone
from benchmark.methods.upgrad import UPGrad, upgrad_weights
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "upgrad", Needs.GRAMIAN,
    defaults={"norm_eps": 0.0001, "reg_eps": 0.0001, "update_scale": "native", "grad_source": "params",
        "head_weighting": "own"},
    bad_values=[
        ({"norm_eps": -0.0001}, "UPGrad: norm_eps.*-0.0001"),
        ({"reg_eps": 0.0}, "UPGrad: reg_eps.*0.0"),
        ({"reg_eps": "1e-4"}, "UPGrad: reg_eps.*'1e-4'"),
        ({"update_scale": "total"}, "UPGrad: update_scale='total'"),
        ({"grad_source": "rep"}, "grad_source='rep'"),
    ],
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def non_conflicting(kind: str, num_tasks: int, seed: int) -> np.ndarray:
    """A Jacobian of the given kind with every pairwise inner product >= 0 (non-negative entries)."""
    return np.abs(jacobian(kind, num_tasks, dim=8, seed=seed))


def upgrad_reference(g: np.ndarray) -> np.ndarray:
    """``(1/T) sum_i Pi(g_i)`` with each projection onto ``{x : G x >= 0}`` solved over ``x`` by SLSQP (the rows
    of ``G`` normalised, which leaves the cone unchanged and helps the solver on badly scaled rows)."""
    t, dim = g.shape
    norms = np.linalg.norm(g, axis=1)
    rows = g[norms > 0] / norms[norms > 0, None]
    out = np.zeros(dim)
    for i in range(t):
        y = g[i] / t
        res = minimize(lambda x, y=y: 0.5 * np.sum((x - y) ** 2), y, jac=lambda x, y=y: x - y, method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda x: rows @ x, "jac": lambda x: rows}],
                       options={"ftol": 1e-16, "maxiter": 1000})
        out += res.x
    return out


def upgrad_direction(g: np.ndarray, **hparams) -> tuple[np.ndarray, np.ndarray]:
    w = UPGrad(len(g), **hparams).gramian_weights(gram(g), torch.ones(len(g))).numpy()
    return w, w @ g


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_does_not_conflict_with_any_task(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=60 + num_tasks)
    trace = (g**2).sum()
    for reg_eps in (1e-4, 1e-8):
        w, d = upgrad_direction(g, reg_eps=reg_eps)
        assert np.all(w >= 1.0 / num_tasks - 1e-12)
        # KKT of the regularised QP: <g_j, d> >= -reg_eps trace(M) w_j
        assert np.all(g @ d >= -reg_eps * trace * w - 1e-10 * trace), (g @ d, reg_eps * trace * w)
    if kind in ("random", "conflicting", "collinear"):
        assert np.all(g @ d >= -1e-7 * trace)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_without_conflict_is_the_mean(kind, num_tasks):
    g = non_conflicting(kind, num_tasks, seed=num_tasks)
    w, d = upgrad_direction(g)
    np.testing.assert_allclose(w, np.full(num_tasks, 1.0 / num_tasks), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d, g.mean(axis=0), rtol=1e-10, atol=1e-14)
    w_sum, _ = upgrad_direction(g, update_scale="sum")
    np.testing.assert_allclose(w_sum, np.ones(num_tasks), rtol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_is_permutation_equivariant(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=70 + num_tasks)
    perm = np.random.default_rng(num_tasks).permutation(num_tasks)
    w, _ = upgrad_direction(g)
    w_perm, _ = upgrad_direction(g[perm])
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_is_the_mean_projection_onto_the_dual_cone(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=6, seed=80 + num_tasks)
    scale = np.linalg.norm(g, axis=1).max()
    # reg_eps I on the normalised Gramian is exact UPGrad on G augmented by sqrt(reg_eps trace(M)) I
    reg_eps = 1e-4
    aug = np.hstack([g, math.sqrt(reg_eps * (g**2).sum()) * np.eye(num_tasks)])
    ref = upgrad_reference(aug)
    w, d = upgrad_direction(g, reg_eps=reg_eps)
    np.testing.assert_allclose(d, ref[:6], atol=1e-7 * scale, rtol=0)
    np.testing.assert_allclose(w, ref[6:] / math.sqrt(reg_eps * (g**2).sum()), atol=1e-6, rtol=0)
    if kind != "badly_scaled":  # there reg_eps dominates the smallest rows whatever its value
        _, d = upgrad_direction(g, reg_eps=1e-14)
        np.testing.assert_allclose(d, upgrad_reference(g), atol=1e-8 * scale, rtol=0)


def test_upgrad_hand_example_and_normalisation():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # Pi(g_1/2) = (0.25, 0.25), Pi(g_2/2) = (0, 0.5)
    w = upgrad_weights(gram(g), reg_eps=1e-12).numpy()
    np.testing.assert_allclose(w, [1.0, 0.75], atol=1e-9)
    np.testing.assert_allclose(w @ g, [0.25, 0.75], atol=1e-9)
    # the trace normalisation makes the weights scale-free; below norm_eps the Gramian is zeroed: the mean
    np.testing.assert_allclose(upgrad_weights(gram(1e3 * g)).numpy(), upgrad_weights(gram(g)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(upgrad_weights(gram(1e-3 * g)).numpy(), [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(upgrad_weights(gram(1e-3 * g), norm_eps=0.0).numpy(), upgrad_weights(gram(g)).numpy(),
                               rtol=1e-12)


def test_upgrad_needs_quadprog_and_raises_on_solver_failure(monkeypatch):
    class Broken:
        @staticmethod
        def solve_qp(*args, **kwargs):
            raise ValueError("constraints are inconsistent, no solution")

    monkeypatch.setattr(dual_cone, "require_quadprog", lambda: Broken)
    with pytest.raises(RuntimeError, match="UPGrad: quadprog failed on the QP of task 0"):
        UPGrad(2).gramian_weights(gram(np.eye(2)), torch.ones(2))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "quadprog", None)
    with pytest.raises(ImportError, match="pip install"):
        UPGrad(3)
    with pytest.raises(ImportError, match="quadprog"):
        create("upgrad", 3)



def test_upgrad_counts_the_mean_fallback_below_norm_eps():
    """Below ``sum_t |g_t|^2 = norm_eps`` the update is the plain mean, and the step is counted in the stats;
    ``norm_eps=0`` projects at every scale (a scale-free rule: the same weights as the gradients times 1e4)."""
    g = jacobian("conflicting", 3, seed=4) * 1e-3
    small = gram(g)
    method = UPGrad(3)
    mean = torch.full((3,), 1 / 3, dtype=torch.float64)
    torch.testing.assert_close(method.gramian_weights(small, torch.ones(3)), mean)
    assert method.stats()["norm_eps_fallback"] == 1.0
    exact = UPGrad(3, norm_eps=0.0)
    torch.testing.assert_close(exact.gramian_weights(small, torch.ones(3)), upgrad_weights(gram(g * 1e4)))
    assert exact.stats()["norm_eps_fallback"] == 0.0
    assert method.gramian_weights(gram(g * 1e4), torch.ones(3)) is not None
    assert method.stats()["norm_eps_fallback"] == 0.0
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert UPGrad(3, norm_eps=0.0).gramian_weights(zero, torch.ones(3)).isfinite().all()
