"""RLW: random loss weighting (docs/methods.md §6)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register


def rlw_weights(num_tasks: int, generator: torch.Generator) -> Tensor:
    """``softmax(eps)`` with ``eps ~ N(0, I_T)`` drawn from ``generator``: positive, summing to 1, mean ``1/T``."""
    return torch.softmax(torch.randn(num_tasks, generator=generator, dtype=torch.float64), dim=0)


@register("rlw")
class RLW(Method):
    """Random loss weighting (Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022, arXiv 2111.10603): every step draws ``lambda = softmax(eps)``,
    ``eps ~ N(0, I_T)``, and the loss is ``sum_t lambda_t L_t`` (weights sum to 1, as LibMTL and nash-mtl).

    The draws come from the method's own ``torch.Generator``, seeded once from the global torch RNG (so from the
    run seed) at the first draw and saved in the module's state dict, so that a resumed run draws the same
    sequence.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = rlw_weights(self.num_tasks, self.generator()).to(losses)
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """A fresh draw applied to the Jacobian."""
        self.last_weights = rlw_weights(self.num_tasks, self.generator()).to(jacobian)
        return self.last_weights @ jacobian
