"""FairGrad: alpha-fair allocation of the update among the tasks, ``w > 0`` with ``(M w)_t = w_t^(-1/alpha)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.bargaining import FixedPointMethod
from benchmark.methods.hparams import choice, number
from benchmark.methods.registry import register
from benchmark.methods.solvers.fixed_point import (
    FixedPoint,
    gramian_array,
    require_nonzero_gradients,
    solve_fixed_point,
)

UPDATE_SCALES = ("native", "sum", "mean")


def fairgrad_weights(gramian: Tensor | np.ndarray, alpha: float = 1.0, start: np.ndarray | None = None,
                     tol: float = 1e-10, max_iter: int = 100) -> tuple[Tensor, FixedPoint]:
    """The FairGrad weights: ``w > 0`` with ``(M w)_t = w_t^(-1/alpha)`` for every task.

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, arXiv 2402.15638, §3 (eq. 4, as
    TorchJD numbers it; not re-checked against the PDF): the direction ``d = sum_t w_t g_t`` maximises the
    alpha-fair utility ``sum_t u_t^(1-alpha) / (1-alpha)`` (``sum_t log u_t`` at ``alpha = 1``) of the task
    improvements ``u_t = <g_t, d>`` over a ball, and its KKT conditions are ``G G^T w = w^(-1/alpha)``, so
    ``<g_t, d> = w_t^(-1/alpha) > 0`` [derived]. ``alpha = 1`` (proportional fairness) is Nash-MTL's
    ``G G^T w = 1/w``; ``alpha -> 0`` tends to the utilitarian sum (equal weights, when every ``<g_t, sum g> > 0``)
    and ``alpha -> inf`` to max-min fairness (the direction of MGDA's min-norm point) [paper; derived].

    The fixed point is the minimiser of a strictly convex potential, solved by :func:`solve_fixed_point` with
    ``p = 1/alpha`` on ``M / mean(M_tt)`` (the solution scales as ``mean(M_tt)^(-alpha/(1+alpha))``), from
    ``start`` (``None``: ``M_tt^(-alpha/(1+alpha))``, the solution for orthogonal gradients). The official code
    runs scipy's ``least_squares`` on ``M w - w^(-1/alpha)`` from ``1/T`` with bounds ``[0, inf)``; the root is
    unique, so both give the same weights up to their tolerances. Unlike Nash-MTL, FairGrad is not equivariant
    to per-task gradient scale for ``alpha != 1``. A zero gradient, or 0 in the convex hull of the gradients,
    leaves no solution and raises :class:`~benchmark.methods.solvers.fixed_point.BargainingError`.
    Returns ``(w, solve)``.
    """
    name = "FairGrad"
    alpha = number(name, "alpha", alpha, low=0, open_low=True)
    m = gramian_array(gramian, name)
    diag = require_nonzero_gradients(m, name)
    p = 1.0 / alpha
    scale = float(diag.mean())
    factor = scale ** (-1.0 / (1.0 + p))
    x0 = (diag / scale) ** (-1.0 / (1.0 + p))
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.shape == x0.shape and np.all(np.isfinite(start)) and np.all(start > 0):
            x0 = start / factor
    solve = solve_fixed_point(m / scale, p, x0, tol=tol, max_iter=max_iter, name=name)
    w = factor * solve.weights
    out = torch.from_numpy(w)
    return (out.to(gramian.device) if isinstance(gramian, Tensor) else out), FixedPoint(w, solve.iterations,
                                                                                     solve.residual)


@register("fairgrad")
class FairGrad(FixedPointMethod):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, arXiv 2402.15638,
    §3, eq. 4 and Algorithm 1): the update ``sum_t w_t g_t`` with ``G G^T w = w^(-1/alpha)``
    (:func:`fairgrad_weights`), solved afresh on every step.

    docs/methods.md §18, Recommended: the official form (OptMN-Lab/fairgrad).

    * ``alpha`` (1.0): the fairness parameter. The paper tunes it per dataset (its Tables 2, 3 and 8), values not
      transcribed yet; set it per protocol.
    * ``update_scale``: ``native`` = ``sum`` writes ``T sum_t w_t g_t`` (official, "to match the sum loss");
      ``mean`` keeps ``sum_t w_t g_t`` (LibMTL).
    * ``max_norm`` (1.0): the official code clips the shared gradient to 1.0 after writing it; LibMTL does not
      clip (``None``). How, and the caveat for ``head_weighting="weighted"``: :class:`FixedPointMethod`.
    * Heads: ``own`` (official); LibMTL back-propagates ``sum_t w_t L_t``, i.e. ``head_weighting="weighted"``.
      The LibMTL form is ``update_scale="mean", max_norm=None, head_weighting="weighted"``.
    * ``max_iter`` (100), ``tol`` (1e-10): the Newton solve
      (:func:`~benchmark.methods.solvers.fixed_point.solve_fixed_point`).
    * ``max_solver_failures`` (10): the failure policy of docs/methods.md §0.7 (:class:`FixedPointMethod`).

    ``stats()`` adds ``solver_iterations``, ``solver_residual`` (``max_t |w_t^(1/alpha) (M w)_t - 1|``),
    ``solver_failed``, ``solver_failures`` and ``clip_coef``.
    """

    def __init__(
        self,
        num_tasks: int,
        alpha: float = 1.0,
        update_scale: str = "native",
        max_norm: float | None = 1.0,
        max_iter: int = 100,
        tol: float = 1e-10,
        max_solver_failures: int = 10,
        grad_source: str = "params",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(num_tasks, max_norm, max_iter, tol, max_solver_failures, grad_source, head_weighting)
        self.alpha = number(self, "alpha", alpha, low=0, open_low=True)
        self.update_scale = choice(self, "update_scale", update_scale, UPDATE_SCALES)

    def solve(self, m: np.ndarray, start: np.ndarray | None) -> FixedPoint:
        return fairgrad_weights(m, self.alpha, tol=self.tol, max_iter=self.max_iter)[1]

    def scale(self) -> float:
        return float(self.num_tasks) if self.update_scale in ("native", "sum") else 1.0
