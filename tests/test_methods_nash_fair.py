"""Property tests of Nash-MTL and FairGrad (docs/methods.md §13 and §18).

Every reference here is computed independently of the solver under test: from the Jacobian instead of the
Gramian, by closed forms, or by scipy on the papers' own problems (the Nash product / alpha-fair utility over a
ball, and FairGrad's official least-squares formulation).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares, minimize

from benchmark.config import load_suite
from benchmark.methods import Needs, create, get
from benchmark.methods.fairgrad import FairGrad, fairgrad_weights
from benchmark.methods.nash_mtl import ACCEPT_RTOL, BargainingError, NashMTL, nash_weights, solve_fixed_point
from benchmark.runner import run_suite
from tests.method_properties import KINDS, adversarial_jacobians, brute_force_min_norm, jacobian
from tests.test_runner import records, write_suite

METHODS = ("nash_mtl", "fairgrad")
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


def has_common_ascent(g: np.ndarray) -> bool:
    """Whether some d has <g_t, d> > 0 for all t: 0 is not in the convex hull of the normalised gradients."""
    norms = np.linalg.norm(g, axis=1)
    if np.any(norms == 0):
        return False
    u = g / norms[:, None]
    v = brute_force_min_norm(u @ u.T)
    return float(v @ u @ u.T @ v) > 1e-12


def utility_optimum(g: np.ndarray, alpha: float) -> np.ndarray:
    """The papers' own problem, solved by SLSQP over d (not over the weights): maximise the alpha-fair utility
    sum_t u_t^(1-alpha)/(1-alpha) (sum_t log u_t at alpha = 1, the Nash product) of u = G d over |d|^2 <= 1."""
    v = brute_force_min_norm(g @ g.T)
    d0 = 0.5 * (v @ g) / np.linalg.norm(v @ g)  # every u_t > 0 here (MGDA's min-norm direction)

    def utility(d):
        u = np.maximum(g @ d, 1e-30)
        return -(np.log(u).sum() if alpha == 1.0 else (u ** (1.0 - alpha)).sum() / (1.0 - alpha))

    def grad(d):
        u = np.maximum(g @ d, 1e-30)
        return -(u ** (-alpha)) @ g

    res = minimize(utility, d0, jac=grad, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda d: 1.0 - d @ d, "jac": lambda d: -2.0 * d}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success or res.status == 8, res.message  # 8: no further decrease at float precision
    return res.x


# --------------------------------------------------------------------------------------- Nash-MTL


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
    d_star = utility_optimum(g, 1.0)
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


# --------------------------------------------------------------------------------------- FairGrad


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
        np.testing.assert_allclose(d, utility_optimum(g, alpha), atol=2e-6, rtol=0)


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


# --------------------------------------------------------------------------------------- both


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
    resumed.reset()
    assert resumed.state_dict()["_extra_state"] == {"solution": None, "step": 0, "solver_failures": 0,
                                                    "last_failure": None}
    with pytest.raises(RuntimeError, match="no earlier weights to reuse"):
        resumed.gramian_weights(bad, losses)


@pytest.mark.parametrize("name", METHODS)
def test_gramian_method_with_default_sources(name):
    method = create(name, 3)
    assert get(name).needs is Needs.GRAMIAN
    assert method.hparams()["head_weighting"] == "own" and method.hparams()["grad_source"] == "params"


def test_recommended_defaults():
    assert NashMTL(3).hparams() == {
        "update_weights_every": 1, "warm_start": True, "max_norm": 1.0, "max_iter": 100, "tol": 1e-10,
        "max_solver_failures": 10, "grad_source": "params", "head_weighting": "own"}
    assert FairGrad(3).hparams() == {
        "alpha": 1.0, "update_scale": "native", "max_norm": 1.0, "max_iter": 100, "tol": 1e-10,
        "max_solver_failures": 10, "grad_source": "params", "head_weighting": "own"}


@pytest.mark.parametrize(
    ("name", "hparams", "named"),
    [
        ("nash_mtl", {"update_weights_every": 0}, "NashMTL: update_weights_every.*0"),
        ("nash_mtl", {"update_weights_every": 1.5}, "NashMTL: update_weights_every.*1.5"),
        ("nash_mtl", {"warm_start": 1}, "NashMTL: warm_start.*1"),
        ("nash_mtl", {"max_norm": 0.0}, "NashMTL: max_norm.*0.0"),
        ("nash_mtl", {"max_norm": float("inf")}, "NashMTL: max_norm.*inf"),
        ("nash_mtl", {"max_iter": 0}, "NashMTL: max_iter.*0"),
        ("nash_mtl", {"max_iter": True}, "NashMTL: max_iter.*True"),
        ("nash_mtl", {"tol": 0.0}, "NashMTL: tol.*0.0"),
        ("nash_mtl", {"tol": "1e-10"}, "NashMTL: tol.*'1e-10'"),
        ("nash_mtl", {"max_solver_failures": -1}, "NashMTL: max_solver_failures.*-1"),
        ("nash_mtl", {"grad_source": "rep"}, "grad_source='rep'"),
        ("fairgrad", {"alpha": 0.0}, "FairGrad: alpha.*0.0"),
        ("fairgrad", {"alpha": -1.0}, "FairGrad: alpha.*-1.0"),
        ("fairgrad", {"alpha": float("nan")}, "FairGrad: alpha.*nan"),
        ("fairgrad", {"alpha": True}, "FairGrad: alpha.*True"),
        ("fairgrad", {"update_scale": "libmtl"}, "FairGrad: update_scale='libmtl'"),
        ("fairgrad", {"max_norm": -1.0}, "FairGrad: max_norm.*-1.0"),
        ("fairgrad", {"max_solver_failures": 0.5}, "FairGrad: max_solver_failures.*0.5"),
        ("fairgrad", {"head_weighting": "both"}, "head_weighting='both'"),
    ],
)
def test_bad_values_name_the_method_and_parameter(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


def test_bad_gramians_raise_value_errors():
    for bad, match in ((torch.ones(2, 3), "square"), (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "non-finite")):
        with pytest.raises(ValueError, match=f"Nash-MTL: .*{match}"):
            nash_weights(bad)
        with pytest.raises(ValueError, match=f"FairGrad: .*{match}"):
            fairgrad_weights(bad)
    with pytest.raises(ValueError, match="FairGrad: alpha"):
        fairgrad_weights(torch.eye(2), alpha=0.0)


def test_both_methods_train_in_a_tiny_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: nash_mtl}, {name: fairgrad, hparams: {alpha: 2.0}}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*solver failure", category=RuntimeWarning)
        run_suite(suite)
    found = records(tmp_path)
    for name, hparams in (("nash_mtl", {}), ("fairgrad", {"alpha": 2.0})):
        rec = found[f"tiny/synthetic_scenes/{name}/seed0"]
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2
        assert rec["method_hparams"] == create(name, 3, **hparams).hparams()
        stats = rec["method_stats"]
        assert stats["solver_failures"]["last"] == 0 and stats["solver_residual"]["last"] <= KKT_TOL
        assert all(stats[f"weight_{t}"]["last"] > 0 for t in range(3))
