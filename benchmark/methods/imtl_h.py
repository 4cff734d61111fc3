"""IMTL-H: IMTL-L scales plus IMTL-G weights for the shared parameters."""

from __future__ import annotations

from torch import Tensor

from benchmark.methods.imtl_g import IMTLG
from benchmark.methods.imtl_l import LossScale
from benchmark.methods.registry import register


@register("imtl_h")
class IMTLH(IMTLG):
    """IMTL-H, the hybrid balance of Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.

    The losses become ``exp(s_t) L_t - s_t`` (IMTL-L, eq. 6), whose gradients train ``s`` and the heads; the
    shared parameters get IMTL-G weights computed on the Gramian of the *scaled* losses' gradients,
    which the engine supplies because it differentiates :meth:`transform_losses`. :meth:`aggregate` takes
    the Jacobian of the *raw* losses and applies the chain rule ``exp(s_t) g_t`` first.
    """

    def __init__(self, num_tasks: int, grad_source: str = "params", head_weighting: str = "own") -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.scale = LossScale(num_tasks)

    def transform_losses(self, losses: Tensor) -> Tensor:
        return self.scale(losses)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        scaled = self.scale.factors().to(jacobian).unsqueeze(1) * jacobian
        return super().aggregate(scaled, losses)

    def stats(self) -> dict[str, float]:
        return {**super().stats(), **self.scale.stats()}
