"""UW: uncertainty weighting with learnable homoscedastic log-variances (docs/methods.md §3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import number
from benchmark.methods.registry import register


def uw_loss(losses: Tensor, log_var: Tensor) -> Tensor:
    """Per-task ``0.5 * exp(-s_t) * L_t + 0.5 * s_t`` with ``s_t = log sigma_t^2``.

    ``d/ds_t = 0.5 (1 - exp(-s_t) L_t)`` vanishes exactly at ``s_t = log L_t``, where the effective weight
    ``d/dL_t = 0.5 exp(-s_t)`` is ``1 / (2 L_t)`` (half SI's).
    """
    s = log_var.to(losses.dtype)
    return 0.5 * torch.exp(-s) * losses + 0.5 * s


@register("uw")
class UW(Method):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, arXiv 1705.07115): the paper's Gaussian
    likelihood objective ``L_t / (2 sigma_t^2) + log sigma_t``, in the form every reference code uses for every
    task, ``sum_t 0.5 exp(-s_t) L_t + 0.5 s_t`` with ``s_t = log sigma_t^2``.

    ``s`` is an ``nn.Parameter`` trained by the main optimizer in the method's own group without weight decay.
    Defaults (docs/methods.md §3, the nash-mtl/FAMO setting): ``init=0`` and ``lr=0.025`` for that group. The LibMTL /
    MTAN setting is ``init=-0.5, lr=None`` (the model's learning rate).
    The logged ``scale_t = 0.5 exp(-s_t)`` is the effective weight of the raw loss ``L_t``.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int, init: float = 0.0, lr: float | None = 0.025) -> None:
        super().__init__(num_tasks)
        self.init = number(self, "init", init)
        self.lr = self.param_lr = number(self, "lr", lr, low=0, open_low=True, none=True)
        self.log_var = nn.Parameter(torch.full((num_tasks,), self.init))

    def transform_losses(self, losses: Tensor) -> Tensor:
        return uw_loss(losses, self.log_var)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = torch.ones_like(losses).detach()
        return self.last_weights

    def factors(self) -> Tensor:
        """``0.5 exp(-s)``: the effective weight of each raw loss (detached)."""
        return 0.5 * torch.exp(-self.log_var.detach())

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.factors().to(jacobian) @ jacobian

    def stats(self) -> dict[str, float]:
        return {**super().stats(),
                **{f"scale_{t}": float(c) for t, c in enumerate(self.factors().tolist())},
                **{f"log_var_{t}": float(s) for t, s in enumerate(self.log_var.detach().tolist())}}
