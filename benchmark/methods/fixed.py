"""Fixed loss weights (linear scalarization with chosen weights)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register


@register("fixed")
class FixedWeights(Method):
    """Fixed loss weights: one backward of ``sum_t w_t L_t`` with constant ``w``; all ones (EW) by default.

    The points of the linear-scalarization sweep that Xin et al. ("Do Current Multi-Task Optimization Methods in
    Deep Learning Even Help?", NeurIPS 2022, §4) compare every method against.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int, weights: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        values = [1.0] * num_tasks if weights is None else [float(w) for w in weights]
        if len(values) != num_tasks or not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) == 0:
            raise ValueError(f"FixedWeights: weights={weights!r} must be {num_tasks} finite values >= 0, not all 0")
        self.weights = values

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        return torch.tensor(self.weights, dtype=jacobian.dtype, device=jacobian.device) @ jacobian
