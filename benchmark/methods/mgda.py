"""MGDA: the min-norm element of the convex hull of the task gradients."""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.min_norm import SOLVERS
from benchmark.methods.registry import register

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


@register("mgda")
class MGDA(Method):
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, eq. 3).

    ``alpha = argmin_{alpha in simplex} alpha^T M~ alpha`` on the (optionally normalised) Gramian ``M~``,
    solved in float64 by :mod:`benchmark.methods.min_norm`; the update is ``alpha @ G`` on the *un-normalised*
    gradients (native scale, ``sum alpha = 1``). With ``normalization="none"``, ``<d, g_t> >= |d|^2`` for
    every task: ``d`` is a common descent direction, or 0 at a Pareto-stationary point. ``solver``: ``pgd``
    (the authors' code, the default), ``frank_wolfe`` (Algorithm 2) or ``qp`` (exact; the others can stop short
    of the KKT point on badly scaled Gramians). ``stats()`` adds the solver iterations of the last step.
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
    ) -> None:
        grad_source = self.default_grad_source if grad_source is None else grad_source
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        name = type(self).__name__
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"{name}: normalization={normalization!r} is not one of {NORMALIZATIONS}")
        if solver not in SOLVERS:
            raise ValueError(f"{name}: solver={solver!r} is not one of {tuple(SOLVERS)}")
        if solver == "qp" and importlib.util.find_spec("quadprog") is None:
            raise ImportError(f"{name}: solver='qp' needs the QP solver quadprog (a dependency of mtobench), which is "
                              "not installed: pip install 'quadprog>=0.1.12'")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{name}: max_iter must be a positive int, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"{name}: tol must be a non-negative finite number, got {tol!r}")
        if not isinstance(official_two_point_clip, bool):
            raise ValueError(
                f"{name}: official_two_point_clip must be a bool, got {official_two_point_clip!r}"
            )
        self.normalization = normalization
        self.solver = solver
        self.max_iter = max_iter
        self.tol = float(tol)
        self.official_two_point_clip = official_two_point_clip

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        m = normalized_gramian(gramian, losses, self.normalization)
        alpha, iterations = SOLVERS[self.solver](
            m.cpu().numpy(), max_iter=self.max_iter, tol=self.tol, official_clip=self.official_two_point_clip
        )
        self.step_stats = {"solver_iterations": float(iterations)}
        self.last_weights = torch.from_numpy(alpha).to(gramian.device)
        return self.last_weights

    def hparams(self) -> dict:
        return {
            "normalization": self.normalization,
            "solver": self.solver,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "official_two_point_clip": self.official_two_point_clip,
            **super().hparams(),
        }
