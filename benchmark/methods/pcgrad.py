"""PCGrad: project each task gradient off the gradients it conflicts with, in Gram form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, flag, number
from benchmark.methods.registry import register

REDUCTIONS = ("sum", "mean")


SHRUNK = 0.99
"""A projection counts as shrunk by ``eps`` when its step is below 99 % of the exact one."""


def pcgrad_projections(gramian: Tensor, permutations: Sequence[Sequence[int]], eps: float = 1e-8,
                       include_self: bool = False, relative_eps: bool = False) -> tuple[Tensor, int, int]:
    """``(C, projections, shrunk)``: the ``[T, T]`` coefficients ``C`` with ``g_i^PC = C[i] @ G`` (Yu et al.,
    "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1 / eq. 1) from the Gramian
    ``M = G G^T`` alone, the number of projections applied and how many of them ``eps`` shrank below 99 %.

    ``g_i^PC`` starts at ``g_i``; for each ``j`` in ``permutations[i]`` (``j = i`` skipped unless
    ``include_self``, as LibMTL), if ``<g_i^PC, g_j> < 0`` then
    ``g_i^PC <- g_i^PC - <g_i^PC, g_j> / (|g_j|^2 + e) g_j``, a projection onto the *original* ``g_j``.
    With ``g_i^PC = c @ G``, ``<g_i^PC, g_j> = (c @ M)_j`` and the projection only changes ``c_j``. The guard
    is ``e = eps`` (absolute, LibMTL's 1e-8: it under-projects gradients with ``|g_j|^2`` near ``eps``, i.e.
    ``|g_j| <~ 1e-3``) or ``e = eps |g_j|^2`` (``relative_eps``: the same relative accuracy at every scale).
    ``eps = 0`` is exact, and a zero ``g_j`` is then never projected on (its dot product is 0). Float64, on
    the CPU (one transfer).
    """
    m = gramian.detach().double().cpu().numpy()
    t = m.shape[0]
    if len(permutations) != t:
        raise ValueError(f"PCGrad: expected {t} permutations, got {len(permutations)}")
    coeffs = np.eye(t)
    projections = shrunk = 0
    for i, order in enumerate(permutations):
        c = coeffs[i]
        for j in order:
            j = int(j)
            if j == i and not include_self:
                continue
            dot = c @ m[:, j]
            denom = m[j, j] * (1.0 + eps) if relative_eps else m[j, j] + eps
            if dot < 0 and denom > 0:
                c[j] -= dot / denom
                projections += 1
                shrunk += int(m[j, j] < SHRUNK * denom)
    return torch.from_numpy(coeffs).to(gramian.device), projections, shrunk


def pcgrad_coefficients(gramian: Tensor, permutations: Sequence[Sequence[int]], eps: float = 1e-8,
                        include_self: bool = False, relative_eps: bool = False) -> Tensor:
    """The coefficients of :func:`pcgrad_projections`."""
    return pcgrad_projections(gramian, permutations, eps, include_self, relative_eps)[0]


def pcgrad_weights(gramian: Tensor, permutations: Sequence[Sequence[int]], eps: float = 1e-8,
                   include_self: bool = False, relative_eps: bool = False) -> Tensor:
    """Weights ``w`` with ``w @ G = sum_i g_i^PC``: the column sums of :func:`pcgrad_coefficients`."""
    return pcgrad_coefficients(gramian, permutations, eps, include_self, relative_eps).sum(dim=0)


@register("pcgrad")
class PCGrad(Method):
    """PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS
    2020, arXiv 2001.06782, Algorithm 1 / eq. 1): ``d = sum_i g_i^PC`` (``reduction="mean"`` divides by T).

    docs/methods.md §9 Recommended: ``j = i`` excluded (``include_self=True`` reproduces LibMTL), projection
    onto the original ``g_j``, ``eps = 1e-8``, sum reduction, heads get their own gradient, and one permutation
    per task and per step from the method's own RNG (seeded once from the global one and saved with the module,
    so a resumed run draws the same permutations).

    ``eps`` is absolute by default (LibMTL; the paper has no guard): a ``g_j`` with ``|g_j|^2`` near ``eps`` is
    projected only partly. ``relative_eps=True`` scales it by ``|g_j|^2`` instead. ``stats()`` counts, per step,
    the ``projections`` applied and the ``eps_shrunk_projections`` among them whose step ``eps`` cut below 99 %.
    """

    needs = Needs.GRAMIAN

    def __init__(
        self,
        num_tasks: int,
        eps: float = 1e-8,
        include_self: bool = False,
        reduction: str = "sum",
        relative_eps: bool = False,
        grad_source: str = "params",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.eps = number(self, "eps", eps, low=0)
        self.include_self = flag(self, "include_self", include_self)
        self.reduction = choice(self, "reduction", reduction, REDUCTIONS)
        self.relative_eps = flag(self, "relative_eps", relative_eps)

    def permutations(self) -> list[list[int]]:
        """One random order of all T tasks per task, drawn from the method's RNG."""
        rng = self.generator()
        return [torch.randperm(self.num_tasks, generator=rng).tolist() for _ in range(self.num_tasks)]

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        coeffs, projections, shrunk = pcgrad_projections(gramian, self.permutations(), self.eps, self.include_self,
                                                         self.relative_eps)
        weights = coeffs.sum(dim=0)
        self.step_stats = {"projections": float(projections), "eps_shrunk_projections": float(shrunk)}
        if self.reduction == "mean":
            weights = weights / self.num_tasks
        self.last_weights = weights.detach()
        return self.last_weights
