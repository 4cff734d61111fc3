"""IMTL-L: impartial loss balancing with learnable per-task scales."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register


class LossScale(nn.Module):
    """Learnable log-scales ``s`` (init 0) mapping losses to ``exp(s) * L - s``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, loss balance (eq. 6) with base ``a = e``
    and ``b = 1``. ``d/ds_t = exp(s_t) L_t - 1`` vanishes exactly when the scaled loss ``exp(s_t) L_t`` is 1.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses: Tensor) -> Tensor:
        s = self.log_scale.to(losses.dtype)
        return torch.exp(s) * losses - s

    def factors(self) -> Tensor:
        """``exp(s)``: the derivative of each scaled loss w.r.t. its raw loss (detached)."""
        return self.log_scale.detach().exp()

    def stats(self) -> dict[str, float]:
        return {f"scale_{t}": float(c) for t, c in enumerate(self.factors().tolist())}


@register("imtl_l")
class IMTLL(Method):
    """IMTL-L (Liu et al., ICLR 2021, eq. 6): optimise ``sum_t exp(s_t) L_t - s_t`` with unit weights.

    ``s`` is an ``nn.Parameter`` trained with the model (its own group, no weight decay). :meth:`aggregate`
    takes the Jacobian of the *raw* losses and returns ``sum_t exp(s_t) g_t``.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.scale = LossScale(num_tasks)

    def transform_losses(self, losses: Tensor) -> Tensor:
        return self.scale(losses)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = torch.ones_like(losses).detach()
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.scale.factors().to(jacobian) @ jacobian

    def stats(self) -> dict[str, float]:
        return {**super().stats(), **self.scale.stats()}
