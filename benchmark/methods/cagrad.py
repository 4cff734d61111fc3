"""CAGrad: the direction that maximises the worst task improvement near the average gradient, in Gram form."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar, nnls
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, integer, number
from benchmark.methods.registry import register

RESCALES = (0, 1, 2)
UPDATE_SCALES = ("native", "sum", "mean")
_DEGENERATE_NORM = 1e-9


def cagrad_objective(m: np.ndarray, w: np.ndarray, radius: float) -> float:
    """``F(w) = g_w^T g_0 + radius |g_w|`` from the Gramian: ``g_w^T g_0 = w^T M 1/T``, ``|g_w|^2 = w^T M w``."""
    return float(w @ m.mean(axis=1) + radius * math.sqrt(max(w @ m @ w, 0.0)))


def _newton_polish(m: np.ndarray, w: np.ndarray, radius: float, steps: int = 4) -> np.ndarray:
    """Newton steps on the face of the simplex that holds ``w``'s support (entries > 1e-9).

    SLSQP stops when ``F`` stalls, which leaves ``w`` (and so ``d``) accurate to about ``sqrt(ftol)``; on the
    right face ``F`` is smooth and Newton's method recovers full precision. The polished point is kept only if
    it stays on the face and does not increase ``F``.
    """
    on = w > 1e-9
    if on.sum() < 2:
        return w
    ms, bs = m[np.ix_(on, on)], m.mean(axis=1)[on]
    n = int(on.sum())
    x = w[on] / w[on].sum()
    for _ in range(steps):
        mx = ms @ x
        q = math.sqrt(max(x @ mx, 0.0))
        if q <= _DEGENERATE_NORM:
            return w
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = radius * (ms / q - np.outer(mx, mx) / q**3)
        kkt[:n, n] = kkt[n, :n] = 1.0
        rhs = np.concatenate([-(bs + radius * mx / q), [0.0]])
        x = x + np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            return w
        x = x / x.sum()
    polished = np.zeros_like(w)
    polished[on] = x
    if cagrad_objective(m, polished, radius) <= cagrad_objective(m, w, radius) + 1e-13:
        return polished
    return w


def cagrad_dual(gramian: np.ndarray, c: float, max_iter: int = 1000, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """``w* = argmin_{w in simplex} F(w) = g_w^T g_0 + c |g_0| |g_w|`` (``g_w = w @ G``, ``g_0`` the mean
    gradient, ``|g_0|^2 = mean(M)``), from the Gramian.

    ``F`` is convex and positively homogeneous in ``M``, so ``M`` is first divided by its mean diagonal.
    T = 1: ``w = [1]``; T = 2: bounded 1-D Brent on ``w = (x, 1 - x)`` (``xatol=tol``) plus both end points
    (the CAGrad repo's Cityscapes code); T >= 3: SLSQP from ``1/T`` with bounds ``[0, 1]`` and ``sum w = 1``
    (the CAGrad, LibMTL and nash-mtl codes), ``ftol=tol``, at most ``max_iter`` iterations, then a few Newton
    steps on the support's face. A solver that reports failure raises ``RuntimeError``.
    Returns ``(w, iterations)``.
    """
    m = np.array(gramian, dtype=np.float64)
    t = m.shape[0]
    scale = m.diagonal().mean()
    if t == 1 or scale <= 0:
        return np.full(t, 1.0 / t), 0
    m = m / scale
    b = m.mean(axis=1)
    radius = c * math.sqrt(max(m.mean(), 0.0))

    if t == 2:
        def along(x: float) -> float:
            return cagrad_objective(m, np.array([x, 1.0 - x]), radius)

        res = minimize_scalar(along, bounds=(0.0, 1.0), method="bounded",
                              options={"xatol": tol, "maxiter": max_iter})
        if not res.success:
            raise RuntimeError(f"CAGrad: the 1-D solver failed ({res.message}) after {res.nfev} evaluations")
        x = min((0.0, 1.0, float(res.x)), key=along)
        return np.array([x, 1.0 - x]), int(res.nfev)

    def gradient(w: np.ndarray) -> np.ndarray:
        m_w = m @ w
        norm = math.sqrt(max(w @ m_w, 0.0))
        return b + (radius / norm) * m_w if norm > 0 else b

    res = minimize(
        lambda w: cagrad_objective(m, w, radius),
        np.full(t, 1.0 / t),
        jac=gradient,
        bounds=[(0.0, 1.0)] * t,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        method="SLSQP",
        options={"ftol": tol, "maxiter": max_iter},
    )
    if not res.success:
        raise RuntimeError(f"CAGrad: SLSQP failed ({res.message}, status {res.status}) after {res.nit} iterations")
    w = np.clip(res.x, 0.0, None)
    return _newton_polish(m, w / w.sum(), radius), int(res.nit)


def dual_cone_projection(gramian: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Weights ``a`` with ``a @ G`` the projection of ``coeffs @ G`` onto the dual cone ``{x : G x >= 0}``.

    The projection is ``G^T (coeffs + mu)`` with ``mu = argmin_{mu >= 0} |G^T (coeffs + mu)|^2``, a
    non-negative least-squares problem in the factor ``A`` of ``M = A^T A`` (from ``eigh``), solved exactly
    by scipy's active-set NNLS.
    """
    vals, vecs = np.linalg.eigh(0.5 * (gramian + gramian.T))
    factor = np.sqrt(np.clip(vals, 0.0, None))[:, None] * vecs.T
    try:
        mu, _ = nnls(factor, -factor @ coeffs, maxiter=50 * len(coeffs))
    except RuntimeError as exc:
        raise RuntimeError(f"CAGrad: NNLS failed projecting onto the dual cone: {exc}") from exc
    return coeffs + mu


def cagrad_weights(
    gramian: Tensor, c: float = 0.4, rescale: int = 1, max_iter: int = 1000, tol: float = 1e-12
) -> tuple[Tensor, int]:
    """Weights ``alpha`` with ``alpha @ G = d`` at the mean scale (``g_0 = G^T 1/T``); returns ``(alpha, iterations)``.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021, eq. 4 / Algorithm 1:
    ``d = g_0 + (c |g_0| / |g_w*|) g_w*`` with ``w*`` from :func:`cagrad_dual`, so ``d`` maximises
    ``min_t <g_t, d>`` over the ball ``|d - g_0| <= c |g_0|``. ``rescale`` 0 keeps ``d``, 1 divides it by
    ``1 + c^2``, 2 by ``1 + c``. When ``c |g_0| = 0`` there is no solve and ``d = g_0``.

    When ``g_w* = 0`` (``|g_w*| <= 1e-9`` relative to the root-mean-square gradient norm: 0 is in the convex
    hull of the gradients and the best worst-case improvement is 0) eq. 4 is undefined, and the reference
    codes' ``|g_w| + 1e-8`` guard returns about ``g_0``, which need not be optimal. Here ``d`` is the point of
    the dual cone ``{x : G x >= 0}`` nearest ``g_0`` (:func:`dual_cone_projection`), which is optimal and lies in
    the ball (pulled back onto it if, at the tolerance, it does not). Float64, on the CPU.
    """
    m = gramian.detach().double().cpu().numpy()
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"CAGrad: expected a square [T, T] Gramian, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("CAGrad: the Gramian has non-finite entries")
    t = m.shape[0]
    mean = np.full(t, 1.0 / t)
    alpha, iterations = mean, 0
    scale = m.diagonal().mean()
    if c > 0 and scale > 0:
        mn = m / scale
        radius = c * math.sqrt(max(mn.mean(), 0.0))
        if radius > 0:
            w, iterations = cagrad_dual(mn, c, max_iter=max_iter, tol=tol)
            gw_norm = math.sqrt(max(w @ mn @ w, 0.0))
            if gw_norm > _DEGENERATE_NORM:
                alpha = mean + (radius / gw_norm) * w
            else:
                alpha = dual_cone_projection(mn, mean)
                shift = alpha - mean
                dist = math.sqrt(max(shift @ mn @ shift, 0.0))
                if dist > radius:
                    alpha = mean + (radius / dist) * shift
    if rescale == 1:
        alpha = alpha / (1.0 + c**2)
    elif rescale == 2:
        alpha = alpha / (1.0 + c)
    return torch.from_numpy(alpha).to(gramian.device), iterations


@register("cagrad")
class CAGrad(Method):
    """CAGrad (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021, arXiv 2110.14048, eq. 4 and Algorithm 1), solved on the Gramian by :func:`cagrad_weights`.

    docs/methods.md §12 Recommended: ``c = 0.4``, ``rescale = 1``, ``update_scale = "native"``, which for
    CAGrad is the sum scale ``T d`` of the CAGrad, nash-mtl, FAMO and fairgrad repos; ``"mean"`` keeps ``d``
    (LibMTL, whose preset also uses ``c = 0.5``). Heads get their own gradient. A solver failure raises.
    ``stats()`` adds the solver iterations of the last step.
    """

    needs = Needs.GRAMIAN

    def __init__(
        self,
        num_tasks: int,
        c: float = 0.4,
        rescale: int = 1,
        update_scale: str = "native",
        max_iter: int = 1000,
        tol: float = 1e-12,
        grad_source: str = "params",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.c = number(self, "c", c, low=0)
        self.rescale = int(choice(self, "rescale", rescale, RESCALES))
        self.update_scale = choice(self, "update_scale", update_scale, UPDATE_SCALES)
        self.max_iter = integer(self, "max_iter", max_iter, 1)
        self.tol = number(self, "tol", tol, low=0, open_low=True)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        alpha, iterations = cagrad_weights(gramian, self.c, self.rescale, self.max_iter, self.tol)
        self.step_stats = {"solver_iterations": float(iterations)}
        if self.update_scale in ("native", "sum"):
            alpha = alpha * self.num_tasks
        self.last_weights = alpha.detach()
        return self.last_weights
