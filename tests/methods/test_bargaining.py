"""What Nash-MTL and FairGrad share (benchmark/methods/bargaining.py): adversarial inputs, the failure policy and the
state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import create
from benchmark.methods.fairgrad import fairgrad_weights
from benchmark.methods.nash_mtl import nash_weights
from tests.method_properties import adversarial_jacobians, brute_force_min_norm, jacobian

METHODS = ("nash_mtl", "fairgrad")


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def nash(g: np.ndarray, **kwargs) -> np.ndarray:
    return nash_weights(gram(g), **kwargs)[0].numpy()


def fair(g: np.ndarray, alpha: float, **kwargs) -> np.ndarray:
    return fairgrad_weights(gram(g), alpha, **kwargs)[0].numpy()


def has_common_ascent(g: np.ndarray) -> bool:
    """Whether some d has <g_t, d> > 0 for all t: 0 is not in the convex hull of the normalised gradients."""
    norms = np.linalg.norm(g, axis=1)
    if np.any(norms == 0):
        return False
    u = g / norms[:, None]
    v = brute_force_min_norm(u @ u.T)
    return float(v @ u @ u.T @ v) > 1e-12


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", [*adversarial_jacobians(), "zero_row_2", "zero_row_5", "near_opposite"])
def test_adversarial_inputs_give_a_solution_or_a_clear_error(name, case):
    """Documented behaviour: a zero gradient, or 0 in the convex hull of the gradients, has no fixed point and
    raises (a fresh method has nothing to reuse); everything else returns finite positive weights solving it."""
    if case.startswith("zero_row"):
        g = jacobian("zero_row", int(case[-1]), dim=8, seed=0)
    elif case == "near_opposite":
        rng = np.random.default_rng(1)
        g = rng.standard_normal((2, 8))
        g[1] = -g[0] + 1e-3 * rng.standard_normal(8)
    else:
        g = adversarial_jacobians()[case]
    jac = torch.as_tensor(g, dtype=torch.float32)
    method = create(name, g.shape[0])
    if not has_common_ascent(g):
        with pytest.raises(RuntimeError, match="zero gradient|convex hull"):
            method.aggregate(jac)
        assert method.solver_failures == 1 and method.last_weights is None
        return
    direction = method.aggregate(jac)
    assert direction.dtype == torch.float32 and torch.all(torch.isfinite(direction))
    assert all(math.isfinite(v) for v in method.stats().values())
    w = nash(g) if name == "nash_mtl" else fair(g, 1.0)
    assert np.all(w > 0) and np.all(np.isfinite(w))
    np.testing.assert_allclose(w * (g @ g.T @ w), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_failures_are_counted_reused_and_fatal_beyond_the_threshold(name):
    good = jacobian("random", 3, dim=8, seed=0)
    bad = jacobian("zero_row", 3, dim=8, seed=0)
    losses = torch.ones(3, dtype=torch.float64)
    method = create(name, 3, max_solver_failures=2)
    method.gramian_weights(gram(good), losses)
    solved = (nash(good) if name == "nash_mtl" else fair(good, 1.0)) * method.scale()
    for count in (1, 2):
        with pytest.warns(RuntimeWarning, match=f"solver failure {count} of at most 2.*zero gradient"):
            again = method.gramian_weights(gram(bad), losses).numpy()
        assert method.stats()["solver_failures"] == count and method.stats()["solver_failed"] == 1.0
        coef = min(1.0, 1.0 / (np.linalg.norm(solved @ bad) + 1e-6))  # the clip, on this step's gradients
        np.testing.assert_allclose(again, solved * coef, rtol=1e-12)
    with pytest.raises(RuntimeError, match="3 solver failures exceed max_solver_failures=2"):
        method.gramian_weights(gram(bad), losses)
    strict = create(name, 3, max_solver_failures=0)
    strict.gramian_weights(gram(good), losses)
    with pytest.raises(RuntimeError, match="exceed max_solver_failures=0"):
        strict.gramian_weights(gram(bad), losses)


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip(name):
    rng = np.random.default_rng(2)
    grams = [gram(jacobian("conflicting", 3, dim=8, seed=1) + 0.1 * rng.standard_normal((3, 8))) for _ in range(6)]
    bad = gram(jacobian("zero_row", 3, dim=8, seed=0))
    losses = torch.ones(3, dtype=torch.float64)
    hparams = {"update_weights_every": 2} if name == "nash_mtl" else {"alpha": 2.0}
    method = create(name, 3, **hparams)
    method.gramian_weights(grams[0], losses)
    if name == "nash_mtl":
        method.gramian_weights(bad, losses)  # step 1: no solve, the weights of step 0 are reused
        assert method.stats()["solver_iterations"] == 0 and method.solver_failures == 0
    with pytest.warns(RuntimeWarning):
        method.gramian_weights(bad, losses)
    state = method.state_dict()
    assert state["_extra_state"]["solver_failures"] == 1
    assert state["_extra_state"]["step"] == (3 if name == "nash_mtl" else 2)
    expected = [method.gramian_weights(m, losses) for m in grams[1:]]

    resumed = create(name, 3, **hparams)
    resumed.load_state_dict(state)
    assert resumed.solver_failures == 1
    for m, weights in zip(grams[1:], expected):
        torch.testing.assert_close(resumed.gramian_weights(m, losses), weights, rtol=0, atol=0)
    fresh = create(name, 3, **hparams)
    assert fresh.state_dict()["_extra_state"] == {"solution": None, "step": 0, "solver_failures": 0,
                                                  "last_failure": None}
    with pytest.raises(RuntimeError, match="no earlier weights to reuse"):
        fresh.gramian_weights(bad, losses)

