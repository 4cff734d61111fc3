"""Equal weighting (linear scalarization)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register


@register("ew")
class EW(Method):
    """Equal weighting: one backward of ``sum_t L_t``, so the shared update is ``sum_t g_t``.

    The linear-scalarization baseline with unit weights (the LibMTL/nash-mtl scale, sum of weights = T);
    see Xin et al., "Do Current Multi-Task Optimization Methods in Deep Learning Even Help?", NeurIPS 2022.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = torch.ones_like(losses).detach()
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        return jacobian.sum(dim=0)
