"""Nash-MTL: the Nash bargaining solution of the task gradients, ``alpha > 0`` with ``(M alpha)_t = 1/alpha_t``.

The maths is a pure function of the float64 Gramian, :func:`nash_weights`; its solver
(:mod:`benchmark.methods.solvers.fixed_point`) and the policy around it (:mod:`benchmark.methods.bargaining`)
are shared with FairGrad.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.bargaining import FixedPointMethod
from benchmark.methods.hparams import flag, integer
from benchmark.methods.registry import register
from benchmark.methods.solvers.fixed_point import (
    FixedPoint,
    gramian_array,
    require_nonzero_gradients,
    solve_fixed_point,
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
        self.update_weights_every = integer(self, "update_weights_every", update_weights_every, 1)
        self.warm_start = flag(self, "warm_start", warm_start)

    def wants_solve(self) -> bool:
        return self._step % self.update_weights_every == 0

    def solve(self, m: np.ndarray, start: np.ndarray | None) -> FixedPoint:
        return nash_weights(m, start if self.warm_start else None, tol=self.tol, max_iter=self.max_iter)[1]
