"""Geometric loss strategy: minimise the geometric mean of the task losses.

Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
Learning", CVPR Workshops 2019, Eq. 2: ``L = (prod_t L_t)^(1/T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods import Method, Needs


def gls_weights(losses: Tensor) -> Tensor:
    """``dL/dL_t = L / (T L_t)`` for the geometric mean ``L``, computed in log space (no overflow of the product).

    The engine back-propagates ``sum_t w_t L_t`` once, whose gradient equals the geometric mean's.
    """
    if losses.numel() == 0 or not bool(torch.all(losses > 0)):
        raise ValueError(f"GLS: the geometric mean needs every task loss > 0, got {losses.tolist()}")
    logs = losses.detach().double().log()
    return (logs.mean() - logs).exp().div(losses.numel()).to(losses.dtype)


class GLS(Method):
    """Geometric loss strategy (Chennupati et al., CVPRW 2019): weights ``w_t = (prod_s L_s)^(1/T) / (T L_t)``,
    so one backward of ``sum_t w_t L_t`` follows the gradient of the geometric mean of the losses."""

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = gls_weights(losses)
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        if losses is None:
            raise ValueError("GLS: aggregate needs the task losses")
        return self.loss_weights(losses).to(jacobian.dtype) @ jacobian

    def hparams(self) -> dict:
        return {}
