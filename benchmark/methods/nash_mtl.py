"""Nash-MTL: the Nash bargaining solution of the task gradients, ``alpha > 0`` with ``(M alpha)_t = 1/alpha_t``.

The maths is a pure function of the float64 Gramian, :func:`nash_weights`. It and FairGrad
(:mod:`benchmark.methods.fairgrad`) solve the same family of fixed points ``(M w)_t = w_t^(-p)`` (``p = 1`` here),
so the solver :func:`solve_fixed_point` and the policy shared by both methods (failures, clipping, state) live
here too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register

ACCEPT_RTOL = 1e-3
"""A converged fixed point is rejected if some ``(M w)_t`` misses ``w_t^(-p)`` by more than this, relative."""
_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides max_norm by (norm + 1e-6)
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


def nash_weights(gramian: Tensor | np.ndarray, start: np.ndarray | None = None, tol: float = 1e-10,
                 max_iter: int = 100) -> tuple[Tensor, FixedPoint]:
    """The Nash bargaining weights: ``alpha > 0`` with ``(M alpha)_t = 1 / alpha_t`` for every task.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv 2202.01017, §3: the update
    ``d = sum_t alpha_t g_t`` maximising ``sum_t log <g_t, d>`` over a ball is given by ``G G^T alpha = 1/alpha``
    (their Claim 3.1; the numbering is not re-checked against the PDF). Consequences [derived]:
    ``<d, g_t> = 1/alpha_t > 0`` (``d`` improves every task) and ``|d|^2 = sum_t alpha_t (M alpha)_t = T``.

    The condition is the stationarity of the strictly convex ``|G^T alpha|^2 / 2 - sum_t log alpha_t``. It is
    equivariant to per-task scale (``g_t -> c g_t`` gives ``alpha_t -> alpha_t / c``), so it is solved on the
    unit-diagonal ``D M D`` (``D = diag(M_tt^(-1/2))``) and mapped back, ``alpha = D x``; the solve is
    :func:`solve_fixed_point` with ``p = 1`` from ``start`` (an earlier ``alpha``; ``None``: all ones in the
    normalised problem, which is the solution for orthogonal gradients). A zero gradient, or 0 in the convex
    hull of the gradients, leaves no solution and raises :class:`BargainingError`. Returns ``(alpha, solve)``.
    """
    name = "Nash-MTL"
    m = gramian_array(gramian, name)
    scale = 1.0 / np.sqrt(require_nonzero_gradients(m, name))
    normalised = m * np.outer(scale, scale)
    x0 = np.ones(m.shape[0])
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.shape == x0.shape and np.all(np.isfinite(start)) and np.all(start > 0):
            x0 = start / scale
    solve = solve_fixed_point(normalised, 1.0, x0, tol=tol, max_iter=max_iter, name=name)
    alpha = scale * solve.weights
    out = torch.from_numpy(alpha)
    return (out.to(gramian.device) if isinstance(gramian, Tensor) else out), FixedPoint(alpha, solve.iterations,
                                                                                         solve.residual)


def _number(name: str, field: str, value, low: str, allow_none: bool = False) -> float | None:
    """``value`` as a float: ``low`` is "positive" or "non-negative"; else ``ValueError`` naming method and field."""
    if value is None and allow_none:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < 0 or (low == "positive" and value == 0):
        none = " or None" if allow_none else ""
        raise ValueError(f"{name}: {field} must be a {low} finite number{none}, got {value!r}")
    return float(value)


def _count(name: str, field: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: {field} must be an int >= {low}, got {value!r}")
    return value


class FixedPointMethod(Method):
    """What Nash-MTL and FairGrad share: the solver's failure policy, the clipping, the state and the stats.

    * **Failures** (docs/methods.md §0.7 and §13 Recommended). A failed solve (:class:`BargainingError`)
      reuses the last solved weights, is counted (``solver_failures`` in ``stats()``, and a warning), and raises
      ``RuntimeError`` once the count exceeds ``max_solver_failures``. With no earlier solution to reuse it
      raises at once: there is never a fallback to equal weights.
    * **Clipping** (§0.4). ``max_norm`` multiplies the weights by ``min(1, max_norm / (|w @ G| + 1e-6))`` with
      ``|w @ G| = sqrt(w^T M w)``, the factor ``torch.nn.utils.clip_grad_norm_`` would apply to the shared
      gradient (for ``grad_source="params"``; in the representation modes it clips the representation
      gradient). With ``head_weighting="weighted"`` the heads see the clipped weights too, unlike the
      reference codes, which clip the shared parameters only: for those, use ``max_norm=None`` and
      ``train.clip_shared_grad_norm``.
    * **State** (``get_extra_state``): the last solution, the step counter and the failure count, so a resumed
      run warm-starts, reuses and counts as the uninterrupted one would.
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, max_norm: float | None, max_iter: int, tol: float, max_solver_failures: int,
                 grad_source: str, head_weighting: str) -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        name = type(self).__name__
        self.max_norm = _number(name, "max_norm", max_norm, "positive", allow_none=True)
        self.max_iter = _count(name, "max_iter", max_iter, 1)
        self.tol = _number(name, "tol", tol, "positive")
        self.max_solver_failures = _count(name, "max_solver_failures", max_solver_failures, 0)
        self._clear()

    def _clear(self) -> None:
        self._solution: np.ndarray | None = None
        self._step = 0
        self.solver_failures = 0
        self.last_failure: str | None = None
        self._last: dict[str, float] = {}

    def solve(self, m: np.ndarray, start: np.ndarray | None) -> FixedPoint:
        """The method's fixed point on the float64 Gramian ``m`` (subclasses)."""
        raise NotImplementedError

    def scale(self) -> float:
        """The factor of the update scale (§0.3) applied to the solved weights before clipping."""
        return 1.0

    def wants_solve(self) -> bool:
        return True

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        m = gramian_array(gramian, type(self).__name__)
        stats = {"solver_iterations": 0.0, "solver_failed": 0.0}
        if self._solution is None or self.wants_solve():
            try:
                found = self.solve(m, self._solution)
            except BargainingError as exc:
                self._fail(exc)
                stats["solver_failed"] = 1.0
            else:
                self._solution = found.weights
                stats.update(solver_iterations=float(found.iterations), solver_residual=found.residual)
        self._step += 1
        weights = self._solution * self.scale()
        coef = 1.0
        if self.max_norm is not None:
            norm = math.sqrt(max(float(weights @ m @ weights), 0.0))
            coef = min(1.0, self.max_norm / (norm + _CLIP_EPS))
        stats.update(clip_coef=coef, solver_failures=float(self.solver_failures))
        self._last = stats
        self.last_weights = torch.from_numpy(weights * coef).to(gramian.device)
        return self.last_weights

    def _fail(self, exc: BargainingError) -> None:
        name = type(self).__name__
        self.solver_failures += 1
        self.last_failure = str(exc)
        if self._solution is None:
            raise BargainingError(f"{name}: {exc}; there are no earlier weights to reuse (this method never falls "
                                  "back to equal weights)") from exc
        if self.solver_failures > self.max_solver_failures:
            raise BargainingError(f"{name}: {self.solver_failures} solver failures exceed max_solver_failures="
                                  f"{self.max_solver_failures}; the last: {exc}") from exc
        warnings.warn(f"{name}: solver failure {self.solver_failures} of at most {self.max_solver_failures} "
                      f"(reusing the previous weights): {exc}", RuntimeWarning, stacklevel=3)

    def reset(self) -> None:
        super().reset()
        self._clear()

    def stats(self) -> dict[str, float]:
        return {**super().stats(), **self._last}

    def get_extra_state(self) -> dict:
        return {"solution": None if self._solution is None else self._solution.tolist(), "step": self._step,
                "solver_failures": self.solver_failures, "last_failure": self.last_failure}

    def set_extra_state(self, state: dict) -> None:
        solution = state["solution"]
        self._solution = None if solution is None else np.array(solution, dtype=np.float64)
        self._step = int(state["step"])
        self.solver_failures = int(state["solver_failures"])
        self.last_failure = state["last_failure"]

    def hparams(self) -> dict:
        return {"max_norm": self.max_norm, "max_iter": self.max_iter, "tol": self.tol,
                "max_solver_failures": self.max_solver_failures, **super().hparams()}


@register("nash_mtl")
class NashMTL(FixedPointMethod):
    """Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game", ICML 2022, arXiv 2202.01017, §3 and Algorithm 1): the update ``sum_t alpha_t g_t`` with
    ``alpha > 0`` solving ``G G^T alpha = 1/alpha`` (:func:`nash_weights`), native scale (alpha as solved).

    docs/methods.md §13 (Recommended: the nash-mtl algorithm and defaults, clip 1.0, heads per §0.2):

    * ``update_weights_every`` (1): solve every k-th call and reuse ``alpha`` in between (nash-mtl's
      ``update_weights_every``). The engine still computes the Gramian on every step, so only the solve is saved,
      not the per-task backward passes that the paper's §6.4 speed-up counts.
    * ``warm_start`` (True): start from the previous ``alpha`` (nash-mtl starts each step's programs from it).
    * ``max_norm`` (1.0): clip as nash-mtl clips the shared gradient; see :class:`FixedPointMethod` for how and
      for ``head_weighting="weighted"`` (the ``nashmtl`` preset). Since ``|d| = sqrt(T)`` at the solution, the
      clip is active on every step for ``T >= 2``; ``max_norm=None`` keeps ``d``.
    * ``max_iter`` (100), ``tol`` (1e-10): the Newton solve of :func:`solve_fixed_point`. This replaces
      nash-mtl's sequence of at most ``optim_niter = 20`` convex programs (cvxpy/ECOS), which stops early (at a
      residual of 1e-3 or a step of 1e-6) and so returns an approximate ``alpha``; here the fixed point is solved
      to float64 precision in numpy, so neither cvxpy nor ECOS is needed.
    * ``max_solver_failures`` (10): nash-mtl keeps the previous ``alpha`` silently when its solver throws (which
      made it linear scalarisation with cvxpy >= 1.6, nash-mtl issue #21); here a failure is counted, warned and
      fatal beyond the threshold, and fatal at once if there is no earlier ``alpha`` (:class:`FixedPointMethod`).

    Heads get their own gradient by default (``head_weighting="own"``); the ``nashmtl`` preset sets
    ``"weighted"``. ``stats()`` adds ``solver_iterations`` (0 when the solve was skipped), ``solver_residual``
    (``max_t |alpha_t (M alpha)_t - 1|``), ``solver_failed``, ``solver_failures`` (so far) and ``clip_coef``.
    """

    def __init__(
        self,
        num_tasks: int,
        update_weights_every: int = 1,
        warm_start: bool = True,
        max_norm: float | None = 1.0,
        max_iter: int = 100,
        tol: float = 1e-10,
        max_solver_failures: int = 10,
        grad_source: str = "params",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(num_tasks, max_norm, max_iter, tol, max_solver_failures, grad_source, head_weighting)
        name = type(self).__name__
        self.update_weights_every = _count(name, "update_weights_every", update_weights_every, 1)
        if not isinstance(warm_start, bool):
            raise ValueError(f"{name}: warm_start must be a bool, got {warm_start!r}")
        self.warm_start = warm_start

    def wants_solve(self) -> bool:
        return self._step % self.update_weights_every == 0

    def solve(self, m: np.ndarray, start: np.ndarray | None) -> FixedPoint:
        return nash_weights(m, start if self.warm_start else None, tol=self.tol, max_iter=self.max_iter)[1]

    def hparams(self) -> dict:
        return {"update_weights_every": self.update_weights_every, "warm_start": self.warm_start,
                **super().hparams()}
