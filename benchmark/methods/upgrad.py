"""UPGrad: the mean of the task gradients, each projected onto the dual cone of all of them, in Gram form."""

from __future__ import annotations

from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, number
from benchmark.methods.registry import register
from benchmark.methods.solvers.dual_cone import is_mean_fallback, require_quadprog, upgrad_weights

UPDATE_SCALES = ("native", "mean", "sum")


@register("upgrad")
class UPGrad(Method):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024;
    implementation TorchJD): ``d = (1/T) sum_i Pi(g_i)`` with ``Pi`` the projection onto the dual cone of the
    task gradients, so no task's loss increases to first order (up to ``reg_eps``), computed by
    :func:`upgrad_weights`.

    docs/methods.md §17 Recommended: ``norm_eps = reg_eps = 1e-4``, the mean preference vector, native
    scale = mean; ``update_scale="sum"`` multiplies the weights by T. Heads get their own gradient.

    ``norm_eps`` is absolute, in the units of ``|g_t|^2`` (the dual-cone projection itself is scale-free, so
    the paper offers no relative form): gradients with ``sum_t |g_t|^2 < norm_eps`` get the plain mean, and
    ``stats()["norm_eps_fallback"]`` is 1 on every such step (its run mean is the fraction of steps; set
    ``norm_eps=0`` to project at every scale).
    """

    needs = Needs.GRAMIAN

    def __init__(
        self,
        num_tasks: int,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        update_scale: str = "native",
        grad_source: str = "params",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        require_quadprog()
        self.norm_eps = number(self, "norm_eps", norm_eps, low=0)
        self.reg_eps = number(self, "reg_eps", reg_eps, low=0, open_low=True)
        self.update_scale = choice(self, "update_scale", update_scale, UPDATE_SCALES)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        weights = upgrad_weights(gramian, self.norm_eps, self.reg_eps)
        self.step_stats = {"norm_eps_fallback": float(is_mean_fallback(gramian, self.norm_eps))}
        if self.update_scale == "sum":
            weights = weights * self.num_tasks
        self.last_weights = weights.detach()
        return self.last_weights
