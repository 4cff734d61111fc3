"""The fixed point ``(M w)_t = w_t^(-p)``, ``w > 0``, that Nash-MTL (``p = 1``) and FairGrad (``p = 1/alpha``) solve.

Pure float64 numpy maths on the ``[T, T]`` Gramian (docs/methods.md §13 and §18).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

ACCEPT_RTOL = 1e-3
"""A converged fixed point is rejected if some ``(M w)_t`` misses ``w_t^(-p)`` by more than this, relative."""
_FULL_STEP_DECREMENT = 1e-2  # below this squared Newton decrement a full (positive) step is taken unchecked
_MIN_STEP = 1e-12


class BargainingError(RuntimeError):
    """The fixed point ``(M w)_t = w_t^(-p)`` has no (numerically meaningful) solution, or its solve failed."""


@dataclass(frozen=True)
class FixedPoint:
    """A solution ``w > 0`` of ``(M w)_t = w_t^(-p)``: the Newton ``iterations`` it took and its ``residual``
    ``max_t |w_t^p (M w)_t - 1|`` (for Nash-MTL, ``max_t |alpha_t (M alpha)_t - 1|``)."""

    weights: np.ndarray
    iterations: int
    residual: float


def gramian_array(gramian: Tensor | np.ndarray, name: str) -> np.ndarray:
    """``gramian`` as a finite, square, symmetrised float64 numpy array; anything else raises ``ValueError``."""
    if isinstance(gramian, Tensor):
        gramian = gramian.detach().double().cpu().numpy()
    m = np.array(gramian, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{name}: expected a square [T, T] Gramian, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: the Gramian has non-finite entries")
    return 0.5 * (m + m.T)


def require_nonzero_gradients(m: np.ndarray, name: str) -> np.ndarray:
    """The diagonal ``M_tt = |g_t|^2``; a zero one raises :class:`BargainingError` (no fixed point exists)."""
    diag = m.diagonal().copy()
    zero = np.flatnonzero(~(diag > 0))
    if zero.size:
        raise BargainingError(
            f"{name}: task(s) {zero.tolist()} have a zero gradient (M_tt = 0), so (M w)_t = w_t^(-p) has no solution"
        )
    return diag


def fixed_point_potential(m: np.ndarray, w: np.ndarray, p: float) -> float:
    """``F(w) = w^T M w / 2 - sum_t h_p(w_t)`` with ``h_p' = w^(-p)``: ``h_1 = log``, else ``w^(1-p) / (1-p)``.

    ``F`` is strictly convex on ``w > 0`` (``M`` is PSD and ``h_p`` strictly concave) and ``grad F = M w - w^(-p)``,
    so the fixed point is its unique minimiser when it exists.
    """
    barrier = np.log(w) if p == 1.0 else w ** (1.0 - p) / (1.0 - p)
    return float(0.5 * (w @ m @ w) - barrier.sum())


def solve_fixed_point(m: np.ndarray, p: float, start: np.ndarray, tol: float = 1e-10, max_iter: int = 100,
                      name: str = "fixed point") -> FixedPoint:
    """Solve ``(M w)_t = w_t^(-p)``, ``w > 0``, by damped Newton on :func:`fixed_point_potential`.

    ``start`` (positive) is first moved to the minimiser of ``F`` along its ray, ``s = (sum_t v_t^(1-p) / v^T M v)
    ^(1/(1+p))``. Each iteration solves ``(M + diag(p w^(-p-1))) step = w^(-p) - M w``; the step is cut to keep
    ``w`` positive (at most 99 % of the way to the boundary) and, unless the squared Newton decrement is below
    1e-2, backtracked until ``F`` decreases (Armijo, factor 1/4). At most ``max_iter`` Newton steps.

    Convergence: the backward error ``max_t |(M w)_t - w_t^(-p)| / (w_t^(-p) + (|M| w)_t) <= tol``, which float64
    rounding of ``M w`` can always reach. A point that meets it but whose relative residual
    ``max_t |w_t^p (M w)_t - 1|`` exceeds :data:`ACCEPT_RTOL` is rejected: that happens when the iterates run off
    to infinity because no solution exists (a zero gradient, or 0 in the convex hull of the gradients: no
    direction improves every task) or the problem is that close to it. Every failure raises
    :class:`BargainingError`.
    """
    w = np.array(start, dtype=np.float64)
    if w.shape != (m.shape[0],) or not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise ValueError(f"{name}: the start must be {m.shape[0]} positive finite numbers, got {w.tolist()}")
    curvature = float(w @ m @ w)
    if curvature > 0:
        w = w * (np.sum(w ** (1.0 - p)) / curvature) ** (1.0 / (1.0 + p))
    abs_m = np.abs(m)
    backward = math.inf
    for iteration in range(max_iter + 1):
        m_w = m @ w
        target = w ** (-p)
        if not (np.all(np.isfinite(w)) and np.all(w > 0) and np.all(np.isfinite(target))):
            raise BargainingError(f"{name}: the iterate left the positive orthant at iteration {iteration}: "
                                  f"{w.tolist()}")
        backward = float(np.max(np.abs(m_w - target) / (target + abs_m @ w)))
        if backward <= tol:
            residual = float(np.max(np.abs(m_w / target - 1.0)))
            if residual > ACCEPT_RTOL:
                raise BargainingError(
                    f"{name}: stalled at float64 precision after {iteration} iterations with relative residual "
                    f"{residual:.3g} > {ACCEPT_RTOL}: the fixed point does not exist (0 is, or nearly is, in the "
                    "convex hull of the task gradients) or is too ill-conditioned to compute"
                )
            return FixedPoint(w, iteration, residual)
        if iteration == max_iter:
            break
        gradient = m_w - target
        try:
            step = np.linalg.solve(m + np.diag(p * target / w), -gradient)
        except np.linalg.LinAlgError as exc:
            raise BargainingError(f"{name}: singular Newton system at iteration {iteration}: {exc}") from exc
        decrement = float(-gradient @ step)
        size = 1.0
        shrinking = step < 0
        if shrinking.any():
            size = min(1.0, 0.99 * float(np.min(w[shrinking] / -step[shrinking])))
        if decrement > _FULL_STEP_DECREMENT or size < 1.0:
            current = fixed_point_potential(m, w, p)
            while fixed_point_potential(m, w + size * step, p) > current - 0.25 * size * decrement:
                size *= 0.5
                if size < _MIN_STEP:
                    raise BargainingError(f"{name}: the line search failed at iteration {iteration} "
                                          f"(backward error {backward:.3g})")
        w = w + size * step
    raise BargainingError(
        f"{name}: no convergence in max_iter={max_iter} Newton steps (backward error {backward:.3g} > tol={tol:g}); "
        "no solution exists when 0 is in the convex hull of the task gradients"
    )
