"""GradVac: pull every pair of task gradients up to an EMA target cosine, in Gram form (docs/methods.md §11)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import number
from benchmark.methods.registry import register


def gradvac_coefficients(gramian: Tensor, targets: Tensor, orders: Sequence[Sequence[int]], beta: float,
                         eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``(C, targets')``: the ``[T, T]`` coefficients with ``g_i^PC = C[i] @ G`` and the updated EMA targets.

    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine", ICLR 2021, the GradVac update rule (whole model as one group).
    For each ``i`` and each ``j != i`` in ``orders[i]``: ``phi = cos(g_i^PC, g_j)``; if ``phi < phi^_ij``,
    ``g_i^PC += g_j |g_i^PC| (phi^ sqrt(1 - phi^2) - phi sqrt(1 - phi^2^)) / (|g_j| sqrt(1 - phi^2^))``, which
    sets ``cos(g_i^PC, g_j) = phi^_ij``; then ``phi^_ij <- (1 - beta) phi^_ij + beta phi`` with the ``phi`` from
    before the adjustment. With ``g_i^PC = c @ G`` every quantity comes from ``M = G G^T``: ``|g_i^PC|^2 = c M c``,
    ``<g_i^PC, g_j> = (c M)_j``, and the adjustment only changes ``c_j``.

    ``eps`` is LibMTL's absolute guard, added to both denominators (1e-8). ``eps = 0`` is exact: a zero
    ``g_i^PC`` or ``g_j`` has cosine 0, a zero ``g_j`` is never added, and a target of exactly 1 that is not met
    (no finite adjustment reaches it) raises ``FloatingPointError``. Cosines are clipped to ``[-1, 1]``.
    Float64, on the CPU (one transfer).
    """
    m = gramian.detach().double().cpu().numpy()
    phi_hat = targets.detach().double().cpu().numpy().copy()
    t = m.shape[0]
    if m.shape != (t, t) or phi_hat.shape != (t, t) or len(orders) != t:
        raise ValueError(f"GradVac: expected a [T, T] Gramian, [T, T] targets and T orders, got {m.shape}, "
                         f"{phi_hat.shape} and {len(orders)}")
    norms = np.sqrt(np.clip(m.diagonal(), 0.0, None))
    coeffs = np.eye(t)
    for i, order in enumerate(orders):
        c = coeffs[i]
        for j in map(int, order):
            if j == i:
                continue
            norm_i = math.sqrt(max(float(c @ m @ c), 0.0))
            denom = norm_i * norms[j] + eps
            phi = min(max(float(c @ m[:, j]) / denom, -1.0), 1.0) if denom > 0 else 0.0
            target = float(phi_hat[i, j])
            if phi < target and norms[j] > 0:
                root = math.sqrt(max(1.0 - target**2, 0.0))
                if norms[j] * root + eps <= 0:
                    raise FloatingPointError(f"GradVac: target cosine {target} of pair ({i}, {j}) cannot be met "
                                             "by a finite step with eps=0")
                root_phi = math.sqrt(max(1.0 - phi**2, 0.0))
                c[j] += norm_i * (target * root_phi - phi * root) / (norms[j] * root + eps)
            phi_hat[i, j] = (1.0 - beta) * target + beta * phi
    return torch.from_numpy(coeffs).to(gramian.device), torch.from_numpy(phi_hat).to(targets.device)


@register("gradvac")
class GradVac(Method):
    """GradVac (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021, arXiv 2010.05874, the GradVac update rule), on the
    Gramian by :func:`gradvac_coefficients`: ``d = sum_i g_i^PC`` (weights = column sums of ``C``).

    docs/methods.md §11 Recommended: ``beta = 0.5`` (LibMTL; the paper used 1e-2 in its multilingual setting) with
    whole-model grouping, targets starting at 0 (so the first step is PCGrad), ``eps = 1e-8`` (LibMTL; 0 is
    exact), heads get their own gradient, sum scale. The per-layer and per-matrix groupings need one Gramian per
    group, which the engine does not compute; they are not offered. State: the ``[T, T]`` targets (a buffer) and
    the method's own RNG for the order of the ``j``s (seeded once from the global one, saved with the module).
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, beta: float = 0.5, eps: float = 1e-8, grad_source: str = "params",
                 head_weighting: str = "own") -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.beta = number(self, "beta", beta, low=0, high=1)
        self.eps = number(self, "eps", eps, low=0)
        self.register_buffer("targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def orders(self) -> list[list[int]]:
        """For every task ``i``, a random order of the other tasks, drawn from the method's RNG."""
        rng = self.generator()
        return [[j for j in torch.randperm(self.num_tasks, generator=rng).tolist() if j != i]
                for i in range(self.num_tasks)]

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        coeffs, targets = gradvac_coefficients(gramian, self.targets, self.orders(), self.beta, self.eps)
        self.targets.copy_(targets)
        self.last_weights = coeffs.sum(dim=0).detach()
        return self.last_weights
