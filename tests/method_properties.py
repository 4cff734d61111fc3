"""Reusable matrix generators, reference solvers and property asserts for method tests."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

from benchmark.methods.checks import adversarial_jacobians  # noqa: F401  (re-exported for the method tests)

KINDS = ("random", "conflicting", "collinear", "zero_row", "badly_scaled")


def jacobian(kind: str, num_tasks: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """A ``[T, dim]`` float64 Jacobian of the given kind.

    ``conflicting``: every other task has negative cosine with the first; ``collinear``: positive multiples of
    one vector (rank 1); ``zero_row``: the last task's gradient is 0; ``badly_scaled``: row norms from 1e-4 to
    1e2, so the Gramian spans 1e-8 to 1e4.
    """
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((num_tasks, dim))
    if kind == "random":
        return g
    if kind == "conflicting":
        g[1:] = -0.3 * g[0] + 0.5 * g[1:]
        return g
    if kind == "collinear":
        return rng.uniform(0.2, 3.0, size=(num_tasks, 1)) * g[:1]
    if kind == "zero_row":
        g[-1] = 0.0
        return g
    if kind == "badly_scaled":
        return g * np.logspace(-4, 2, num_tasks)[:, None]
    raise ValueError(f"unknown kind {kind!r}")


def brute_force_min_norm(gramian: np.ndarray) -> np.ndarray:
    """Exact ``argmin_{alpha in simplex} alpha^T M alpha`` by solving the KKT system on every support."""
    t = gramian.shape[0]
    best, best_alpha = np.inf, None
    for size in range(1, t + 1):
        for support in itertools.combinations(range(t), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = 2 * gramian[np.ix_(s, s)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            x = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if np.any(x < -1e-12):
                continue
            alpha = np.zeros(t)
            alpha[s] = np.clip(x, 0.0, None)
            alpha /= alpha.sum()
            value = alpha @ gramian @ alpha
            if value < best:
                best, best_alpha = value, alpha
    return best_alpha


def slsqp_min_norm(gramian: np.ndarray) -> np.ndarray:
    """``argmin_{alpha in simplex} alpha^T M alpha`` by SLSQP from the uniform point."""
    t = gramian.shape[0]
    res = minimize(
        lambda a: a @ gramian @ a,
        np.full(t, 1.0 / t),
        jac=lambda a: 2 * gramian @ a,
        bounds=[(0.0, 1.0)] * t,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(t)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.x


def assert_on_simplex(alpha: np.ndarray, atol: float = 1e-10) -> None:
    assert np.all(alpha >= -atol), alpha
    assert abs(alpha.sum() - 1.0) <= atol, alpha.sum()


def assert_min_norm_kkt(gramian: np.ndarray, alpha: np.ndarray, tol: float, support: float = 1e-3) -> None:
    """KKT of the min-norm problem, relative to ``max_t M_tt``: ``(M alpha)_t >= alpha^T M alpha - tol`` for
    every ``t``, with equality where ``alpha_t > support``."""
    scale = max(gramian.diagonal().max(), 1e-300)
    m_alpha = gramian @ alpha
    value = alpha @ m_alpha
    assert np.all(m_alpha >= value - tol * scale), ((m_alpha - value) / scale, alpha)
    on = alpha > support
    assert np.all(np.abs(m_alpha[on] - value) <= tol * scale), ((m_alpha - value) / scale, alpha)


def assert_common_descent(jac: np.ndarray, direction: np.ndarray, rtol: float) -> None:
    """``<d, g_t> >= (1 - rtol) |d|^2`` for every task (MGDA's guarantee when ``d != 0``)."""
    sq = direction @ direction
    assert np.all(jac @ direction >= (1.0 - rtol) * sq), (jac @ direction, sq)


def assert_equal_projections(jac: np.ndarray, direction: np.ndarray, rtol: float) -> None:
    """``<d, g_t/|g_t|>`` is the same for every task with a non-zero gradient (IMTL-G)."""
    norms = np.linalg.norm(jac, axis=1)
    keep = norms > 0
    proj = (jac[keep] / norms[keep, None]) @ direction
    assert np.ptp(proj) <= rtol * np.abs(proj).max(), proj


def alpha_fair_optimum(g: np.ndarray, alpha: float) -> np.ndarray:
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
