"""SI: scale-invariant linear scalarization (docs/methods.md §2)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register


def si_weights(losses: Tensor) -> Tensor:
    """``1 / L_t``: the gradient of ``sum_t log L_t`` is ``sum_t g_t / L_t``. Every loss must be finite and > 0."""
    losses = losses.detach()
    bad = ~(torch.isfinite(losses) & (losses > 0))
    if bad.any():
        raise ValueError(f"SI: log L_t needs every task loss > 0, got losses={losses.tolist()} "
                         f"(tasks {bad.nonzero().flatten().tolist()})")
    return 1.0 / losses


@register("si")
class SI(Method):
    """Scale-invariant linear scalarization: minimise ``sum_t log L_t``, so ``d = sum_t g_t / L_t``.

    The "SI-LS" baseline of Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (arXiv
    2202.01017). Rescaling any loss by ``c > 0`` leaves the update unchanged. The engine back-propagates
    ``sum_t w_t L_t`` with the detached weights ``w_t = 1 / L_t``, which has the gradient of ``sum_t log L_t``;
    the logged weights are therefore the effective weights.
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = si_weights(losses)
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        if losses is None:
            raise ValueError("SI: aggregate needs the task losses")
        return si_weights(losses).to(jacobian) @ jacobian
