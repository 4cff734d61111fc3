"""UPGrad's projections onto the dual cone of the task gradients, as ``T`` small QPs on the Gramian (quadprog,
float64; docs/methods.md §17)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torch import Tensor


def require_quadprog() -> ModuleType:
    """The ``quadprog`` module, or an ``ImportError`` with an install hint (docs/methods.md §0.7)."""
    try:
        import quadprog
    except ImportError as exc:
        raise ImportError(
            "UPGrad needs the QP solver quadprog (a dependency of mtobench): pip install 'quadprog>=0.1.12'"
        ) from exc
    return quadprog


def is_mean_fallback(gramian: Tensor, norm_eps: float) -> bool:
    """Whether ``trace(M) = sum_t |g_t|^2`` is below ``norm_eps`` (or 0), where UPGrad is the plain mean."""
    trace = float(gramian.detach().double().diagonal().sum())
    return not (trace >= norm_eps and trace > 0)


def upgrad_weights(gramian: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Tensor:
    """Weights ``w`` with ``w @ G = (1/T) sum_i Pi(g_i)``, ``Pi`` the projection onto the dual cone
    ``{x : G x >= 0}`` (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232,
    Prop. 1 / Algorithm UPGrad, in TorchJD's Gram form).

    ``M <- M / trace(M)`` (all zeros if ``trace(M) < norm_eps``), ``M <- M + reg_eps I``; for each task ``i``,
    ``v^(i) = argmin_{v >= e_i / T} v^T M v``; ``w = sum_i v^(i)``. With ``M = G G^T`` exactly
    (``reg_eps = 0``), ``G^T v^(i) = Pi(g_i / T)`` by QP duality. ``norm_eps`` is an absolute threshold on
    ``trace(M) = sum_t |g_t|^2`` (TorchJD's and LibMTL's 1e-4): below it, or at ``trace(M) = 0``, UPGrad is the
    mean of the gradients (:func:`is_mean_fallback`).
    The regularisation keeps the QP strictly convex; by its KKT conditions
    ``<g_j, d> >= -reg_eps trace(M) w_j``. Each QP is solved by quadprog (Goldfarb-Idnani) in float64 on the
    CPU; a failure raises ``RuntimeError``.
    """
    quadprog = require_quadprog()
    m = gramian.detach().double().cpu().numpy()
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"UPGrad: expected a square [T, T] Gramian, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("UPGrad: the Gramian has non-finite entries")
    t = m.shape[0]
    trace = float(np.trace(m))
    m = np.zeros_like(m) if is_mean_fallback(gramian, norm_eps) else m / trace
    m = 0.5 * (m + m.T) + reg_eps * np.eye(t)
    total = np.zeros(t)
    for i in range(t):
        lower = np.zeros(t)
        lower[i] = 1.0 / t
        try:
            v = quadprog.solve_qp(m, np.zeros(t), np.eye(t), lower)[0]
        except ValueError as exc:
            raise RuntimeError(f"UPGrad: quadprog failed on the QP of task {i}: {exc}") from exc
        if not np.all(np.isfinite(v)):
            raise RuntimeError(f"UPGrad: quadprog returned non-finite weights {v.tolist()} for task {i}")
        total += v
    return torch.from_numpy(total).to(gramian.device)
