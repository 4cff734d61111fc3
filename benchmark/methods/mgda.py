"""MGDA: the min-norm element of the convex hull of the task gradients."""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, flag, integer, number
from benchmark.methods.registry import register
from benchmark.methods.solvers.min_norm import NORMALIZATIONS, SOLVERS, normalized_gramian

WEIGHT_SUMS = ("one", "tasks")


@register("mgda")
class MGDA(Method):
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, eq. 3).

    ``alpha = argmin_{alpha in simplex} alpha^T M~ alpha`` on the (optionally normalised) Gramian ``M~``,
    solved in float64 by :mod:`benchmark.methods.solvers.min_norm`; the update is ``alpha @ G`` on the *un-normalised*
    gradients (native scale, ``sum alpha = 1``). With ``normalization="none"``, ``<d, g_t> >= |d|^2`` for
    every task: ``d`` is a common descent direction, or 0 at a Pareto-stationary point. ``solver``: ``pgd``
    (the authors' code, the default), ``frank_wolfe`` (Algorithm 2) or ``qp`` (exact; the others can stop short
    of the KKT point on badly scaled Gramians). ``weight_sum``: ``one`` (the simplex, the paper's) or ``tasks``
    (``T alpha``, nash-mtl's ``sol * T``). Adam removes the factor except through its ``eps``, which moves
    parameters with tiny gradients differently: on nash-mtl's NYUv2 fixture step 1's update norm differs by
    2.9e-3 between the two. ``stats()`` adds the solver iterations of the last step.
    """

    needs = Needs.GRAMIAN
    default_grad_source = "params"

    def __init__(
        self,
        num_tasks: int,
        normalization: str = "none",
        solver: str = "pgd",
        max_iter: int = 250,
        tol: float = 1e-5,
        official_two_point_clip: bool = False,
        grad_source: str | None = None,
        head_weighting: str = "own",
        weight_sum: str = "one",
    ) -> None:
        grad_source = self.default_grad_source if grad_source is None else grad_source
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.normalization = choice(self, "normalization", normalization, NORMALIZATIONS)
        self.solver = choice(self, "solver", solver, tuple(SOLVERS))
        if solver == "qp" and importlib.util.find_spec("quadprog") is None:
            raise ImportError(f"{type(self).__name__}: solver='qp' needs the QP solver quadprog (a dependency of "
                              "mtobench), which is not installed: pip install 'quadprog>=0.1.12'")
        self.max_iter = integer(self, "max_iter", max_iter, 1)
        self.tol = number(self, "tol", tol, low=0)
        self.official_two_point_clip = flag(self, "official_two_point_clip", official_two_point_clip)
        self.weight_sum = choice(self, "weight_sum", weight_sum, WEIGHT_SUMS)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        m = normalized_gramian(gramian, losses, self.normalization)
        alpha, iterations = SOLVERS[self.solver](
            m.cpu().numpy(), max_iter=self.max_iter, tol=self.tol, official_clip=self.official_two_point_clip
        )
        self.step_stats = {"solver_iterations": float(iterations)}
        scale = len(alpha) if self.weight_sum == "tasks" else 1
        self.last_weights = torch.from_numpy(alpha * scale).to(gramian.device)
        return self.last_weights
