"""IMTL-G: impartial gradient balancing of the shared parameters."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register

DEGENERATE_SUM = 1e-12


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """Weights ``alpha`` (sum 1, may be < 0) with ``d = alpha @ G`` projecting equally on each ``g_t/|g_t|``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (OpenReview IMPnRXEWpvr): the closed-form
    gradient balance of IMTL-G in torchjd's Gram form, ``n_t = sqrt(M_tt)``, ``v = pinv(M) n``,
    ``alpha = v / sum(v)``, solved on the unit-diagonal ``D M D`` (``D = diag(1/n_t)``, 0 for a zero gradient)
    as ``v = D pinv(D M D) 1``: the same ``v`` wherever ``M`` is invertible, but a task whose gradient is 1e-6 of
    the others no longer sets the conditioning (docs/methods.md §8). Zero gradients get weight 0. When
    ``|sum(v)| max_t n_t < 1e-12`` (all gradients zero, or exactly opposite ones whose balanced direction is
    0) the weights are all 0: torchjd's ``|sum(v)| < 1e-12`` made invariant to the gradient scale (the two
    agree when the largest gradient has norm 1). Float64.
    """
    m = gramian.double()
    norms = m.diagonal().clamp(min=0.0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    v = inv * (torch.linalg.pinv(m * torch.outer(inv, inv), hermitian=True) @ (norms > 0).to(m))
    total = v.sum()
    ok = torch.isfinite(total) & (total.abs() * norms.max() >= DEGENERATE_SUM)
    return torch.where(ok, v / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(v))


@register("imtl_g")
class IMTLG(Method):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, gradient balance):
    ``d = sum_t alpha_t g_t`` with ``sum alpha = 1`` and ``<d, g_t/|g_t|>`` the same for every task.

    Only the direction of ``d`` is invariant to rescaling a task; ``sum alpha = 1`` fixes its sign and
    length, and can make the common projection negative (then ``d`` ascends every loss), as in the paper's
    closed form.
    """

    needs = Needs.GRAMIAN

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        self.last_weights = imtl_g_weights(gramian).detach()
        return self.last_weights
