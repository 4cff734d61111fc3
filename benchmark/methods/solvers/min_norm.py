"""Min-norm element of the convex hull of the task gradients, computed from their Gramian in float64.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, arXiv 1810.04650:
the MGDA sub-problem (eq. 3) is ``min_{alpha in simplex} alpha^T M alpha`` with ``M = G G^T``. Eq. 4 /
Algorithm 1 is the two-point closed form; Algorithm 2 the Frank-Wolfe solver. The projected-gradient solver is
the one the authors' code (intel-isl/MultiObjectiveOptimization) runs. Every function takes a ``[T, T]`` array
(numpy or CPU tensor); the solvers return ``(alpha, iterations)`` with ``alpha`` a float64 numpy array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

OFFICIAL_GAMMA_MAX = 0.999
OFFICIAL_GAMMA_MIN = 0.001
MIN_STEP = 1e-7
_FLAT_RTOL = 1e-12


def as_gramian(gramian) -> np.ndarray:
    """``gramian`` as a finite, square float64 array divided by its largest diagonal entry.

    The minimiser is invariant to a global scale, and this makes the absolute thresholds of the solvers
    (``MIN_STEP``, ``tol``) relative. Anything but a finite square matrix raises ``ValueError``.
    """
    m = np.array(gramian, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"min-norm solver: expected a square [T, T] Gramian, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("min-norm solver: the Gramian has non-finite entries")
    scale = m.diagonal().max()
    return m / scale if scale > 0 else m


def two_point(a: float, b: float, c: float, official_clip: bool = False) -> tuple[float, float]:
    """``argmin_{gamma in [0,1]} |gamma x1 + (1-gamma) x2|^2`` from ``a=<x1,x1>, b=<x1,x2>, c=<x2,x2>``.

    Sener & Koltun, eq. 4 / Algorithm 1: ``gamma = clip((c-b)/(a+c-2b), 0, 1)``. Returns ``(gamma, cost)``.
    ``official_clip`` returns 0.999 / 0.001 at the ends, as the authors' code does. When ``x1 ~ x2``
    (``a + c - 2b`` negligible against ``a + c``) the cost is flat and the cheaper end is returned.
    """
    if b >= a:
        return (OFFICIAL_GAMMA_MAX if official_clip else 1.0), a
    if b >= c:
        return (OFFICIAL_GAMMA_MIN if official_clip else 0.0), c
    den = (a - b) + (c - b)
    if den <= _FLAT_RTOL * (abs(a) + abs(c)):
        return (1.0, a) if a <= c else (0.0, c)
    gamma = min(max((c - b) / den, 0.0), 1.0)
    return gamma, c + gamma * (b - c)


def project_simplex(y) -> np.ndarray:
    """Euclidean projection onto the probability simplex by sorting (Held, Wolfe & Crowder 1974)."""
    y = np.asarray(y, dtype=np.float64)
    u = np.sort(y)[::-1]
    excess = np.cumsum(u) - 1.0
    k = np.arange(1, y.size + 1)
    rho = np.flatnonzero(u - excess / k > 0)[-1]
    return np.maximum(y - excess[rho] / (rho + 1), 0.0)


def pair_init(m: np.ndarray, official_clip: bool = False) -> np.ndarray:
    """The best two-point solution over all pairs ``i < j`` (the authors' initialisation)."""
    t = m.shape[0]
    alpha = np.zeros(t)
    if t == 1:
        alpha[0] = 1.0
        return alpha
    best_cost, best = np.inf, (0, 1, 1.0)
    for i in range(t):
        for j in range(i + 1, t):
            gamma, cost = two_point(m[i, i], m[i, j], m[j, j], official_clip)
            if cost < best_cost:
                best_cost, best = cost, (i, j, gamma)
    i, j, gamma = best
    alpha[i], alpha[j] = gamma, 1.0 - gamma
    return alpha


def boundary_step(alpha: np.ndarray, p: np.ndarray) -> float:
    """Smallest step along ``p`` at which a coordinate of ``alpha`` reaches 0 or 1 (steps <= 1e-7 ignored)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(p < 0, -alpha / p, (1.0 - alpha) / p)
    steps = steps[(p != 0) & np.isfinite(steps) & (steps > MIN_STEP)]
    return float(steps.min()) if steps.size else 1.0


def iterate_min_norm(gramian, step, max_iter: int, tol: float, official_clip: bool):
    """The authors' iteration: from :func:`pair_init`, ``alpha <- step(m, alpha, m @ alpha, official_clip)`` until
    ``|delta alpha|_1 < tol`` or after ``max_iter`` iterations (``T <= 2``: the pair solution). Returns
    ``(alpha, iterations)``."""
    m = as_gramian(gramian)
    alpha = pair_init(m, official_clip)
    if m.shape[0] <= 2:
        return alpha, 0
    for it in range(1, max_iter + 1):
        new = step(m, alpha, m @ alpha, official_clip)
        if np.abs(new - alpha).sum() < tol:
            return new, it
        alpha = new
    return alpha, max_iter


def pgd_step(m: np.ndarray, alpha: np.ndarray, m_alpha: np.ndarray, official_clip: bool) -> np.ndarray:
    p = m_alpha.mean() - m_alpha
    cand = project_simplex(alpha + boundary_step(alpha, p) * p)
    m_cand = m @ cand
    gamma, _ = two_point(alpha @ m_alpha, alpha @ m_cand, cand @ m_cand, official_clip)
    return gamma * alpha + (1.0 - gamma) * cand


def frank_wolfe_step(m: np.ndarray, alpha: np.ndarray, m_alpha: np.ndarray, official_clip: bool) -> np.ndarray:
    k = int(np.argmin(m_alpha))
    gamma, _ = two_point(alpha @ m_alpha, m_alpha[k], m[k, k], official_clip)
    new = gamma * alpha
    new[k] += 1.0 - gamma
    return new


def min_norm_pgd(gramian, max_iter: int = 250, tol: float = 1e-5, official_clip: bool = False):
    """Projected gradient with exact line search, as ``find_min_norm_element`` in the authors' code.

    Each iteration steps along the tangent-projected ``-M alpha`` to the simplex boundary, projects onto the
    simplex and line-searches with :func:`two_point`; it stops when ``|delta alpha|_1 < tol`` or after
    ``max_iter`` iterations. Returns ``(alpha, iterations)``.
    """
    return iterate_min_norm(gramian, pgd_step, max_iter, tol, official_clip)


def min_norm_frank_wolfe(gramian, max_iter: int = 250, tol: float = 1e-5, official_clip: bool = False):
    """Frank-Wolfe (Sener & Koltun, Algorithm 2) from the pair initialisation of the authors' code.

    Each iteration moves towards the vertex ``e_k``, ``k = argmin_k (M alpha)_k``, with the two-point line
    search; same stopping rule and cap as :func:`min_norm_pgd`. Returns ``(alpha, iterations)``.
    """
    return iterate_min_norm(gramian, frank_wolfe_step, max_iter, tol, official_clip)


QP_REGULARIZATION = 1e-12
"""Added to the diagonal of the unit-diagonal Gramian so that quadprog sees a strictly convex problem."""


def min_norm_qp(gramian, max_iter: int = 250, tol: float = 1e-5, official_clip: bool = False):
    """The exact simplex-constrained minimiser by a dual active-set QP (Goldfarb & Idnani, via ``quadprog``).

    Not the authors' solver: the projected-gradient one stops early on badly scaled Gramians (its ``tol`` is on
    ``alpha``, not on optimality), while this one meets the KKT conditions to rounding. ``max_iter``, ``tol`` and
    ``official_clip`` only matter for ``T <= 2``, solved in closed form like the other solvers. Returns
    ``(alpha, iterations)``; a failed solve raises ``RuntimeError``.
    """
    import quadprog

    m = as_gramian(gramian)
    t = m.shape[0]
    if t <= 2:
        return pair_init(m, official_clip), 0
    constraints = np.hstack([np.ones((t, 1)), np.eye(t)])
    bounds = np.concatenate([[1.0], np.zeros(t)])
    try:
        alpha, _, _, iterations, _, _ = quadprog.solve_qp(m + QP_REGULARIZATION * np.eye(t), np.zeros(t),
                                                          constraints, bounds, meq=1)
    except ValueError as exc:
        raise RuntimeError(f"min-norm QP failed on a {t}x{t} Gramian: {exc}") from exc
    alpha = np.clip(alpha, 0.0, None)
    return _polish(m, alpha / alpha.sum()), int(iterations[0])


def _polish(m: np.ndarray, alpha: np.ndarray, max_iter: int = 50) -> np.ndarray:
    """Primal active-set refinement of the QP's answer without its regularisation: solve the KKT system
    ``M_SS a = lambda 1, sum a = 1`` on a support ``S``, drop negative weights, add the task whose ``(M a)_t`` is
    most below ``a^T M a``, repeat. Keeps the QP's answer unless the refinement is feasible and no worse."""
    support = alpha > 1e-12 * alpha.max()
    best = alpha
    for _ in range(max_iter):
        a = _kkt_solution(m, support)
        while a is not None and np.any(a[support] < 0):
            support[np.argmin(np.where(support, a, np.inf))] = False
            a = _kkt_solution(m, support)
        if a is None:
            break
        if a @ m @ a <= best @ m @ best:
            best = a
        m_a = m @ a
        violation = np.where(support, np.inf, m_a - a @ m_a)
        if violation.min() >= -1e-15 * max(abs(a @ m_a), 1e-300):
            break
        support[np.argmin(violation)] = True
    return best


def _kkt_solution(m: np.ndarray, support: np.ndarray) -> np.ndarray | None:
    k = int(support.sum())
    if k == 0:
        return None
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = m[np.ix_(support, support)]
    kkt[:k, k] = kkt[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
    if not np.all(np.isfinite(solution)):
        return None
    a = np.zeros(m.shape[0])
    a[support] = solution
    return a


SOLVERS: dict[str, Callable[..., tuple[np.ndarray, int]]] = {
    "pgd": min_norm_pgd,
    "frank_wolfe": min_norm_frank_wolfe,
    "qp": min_norm_qp,
}
ITERATIVE_SOLVERS = ("pgd", "frank_wolfe")


NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_TINY = 1e-30


def gradient_normalizers(gramian: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """Per-task divisors ``n_t`` of the gradients before the solve (Sener & Koltun's code, not in the paper).

    ``none``: 1; ``l2``: ``|g_t|``; ``loss``: ``L_t``; ``loss+``: ``L_t |g_t|``. A zero divisor (zero gradient
    or zero loss) is replaced by 1, which leaves that row of the Gramian as it is. Negative losses raise.
    """
    m = gramian.double()
    ones = torch.ones(m.shape[0], dtype=m.dtype, device=m.device)
    if normalization == "none":
        return ones
    norms = m.diagonal().clamp(min=0.0).sqrt()
    if normalization == "l2":
        n = norms
    else:
        losses = losses.detach().to(m)
        if not bool(torch.all(losses >= 0)):
            raise ValueError(
                f"MGDA normalization={normalization!r} needs non-negative losses, got {losses.tolist()}"
            )
        n = losses if normalization == "loss" else losses * norms
    return torch.where(n > _TINY, n, ones)


def normalized_gramian(gramian: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """``M_ij / (n_i n_j)``: the Gramian of the normalised gradients ``g_t / n_t``."""
    n = gradient_normalizers(gramian, losses, normalization)
    return gramian.double() / torch.outer(n, n)
