"""DB-MTL: dual balancing of log-losses and of gradient magnitudes (docs/methods.md §16)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import number
from benchmark.methods.registry import register


def db_mtl_log_losses(losses: Tensor, eps: float = 1e-8) -> Tensor:
    """``log(L_t + eps)`` (loss-scale balancing: the gradient of ``log(c L)`` does not depend on ``c``)."""
    shifted = losses + eps
    if not bool(torch.all(shifted.detach() > 0)):
        raise ValueError(f"DBMTL: log(L + {eps}) needs every loss above {-eps}, got {losses.detach().tolist()}")
    return shifted.log()


def db_mtl_ema(buffer: Tensor, grads: Tensor, beta: float, beta_sigma: float, step: int) -> Tensor:
    """``g^ <- g + beta_k (g^ - g)`` with ``beta_k = beta / step^beta_sigma`` (``step`` counts from 1)."""
    return grads + (beta / step**beta_sigma) * (buffer - grads)


def db_mtl_weights(ema_grads: Tensor, eps: float = 1e-8) -> Tensor:
    """``alpha_t = max_i |g^_i| / (|g^_t| + eps)`` in float64, so that every ``alpha_t g^_t`` has the norm
    ``max_i |g^_i|`` (up to ``eps``); 0 for a zero ``g^_t`` when ``eps = 0``."""
    norms = torch.linalg.vector_norm(ema_grads.double(), dim=1)
    denom = norms + eps
    return torch.where(denom > 0, norms.max() / denom, torch.zeros_like(norms))


@register("db_mtl")
class DBMTL(Method):
    """DB-MTL (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang & Kwok, "Dual-Balancing for Multi-Task Learning",
    arXiv 2308.12029, 2023: log-loss transform and maximum-norm gradient normalisation of EMA gradients) in the
    authors' LibMTL form.

    * Loss-scale balancing: :meth:`transform_losses` maps ``L_t`` to ``log(L_t + eps)``; the engine computes
      the Jacobian of these log-losses, and every head gets the gradient of its own log-loss.
    * Gradient-magnitude balancing (:meth:`aggregate`): an EMA ``g^_t`` of the full per-task gradients
      (:func:`db_mtl_ema`, buffer starting at 0, ``beta_k = beta / k^beta_sigma``), then
      ``d = sum_t alpha_t g^_t`` with :func:`db_mtl_weights` (native scale: every term has the largest norm).
    * docs/methods.md §16 Recommended, as LibMTL: ``beta = 0.9``, ``beta_sigma = 0``, ``eps = 1e-8`` (both the log
      offset and the norm guard), shared parameters only (LibMTL rejects representation gradients: an EMA over
      per-sample ``grad_z`` of different batches is meaningless).
    * State: the ``[T, P]`` EMA buffer (in the Jacobian's dtype; its size follows the first Jacobian and is
      restored from a state dict) and the step count ``k``.
    """

    needs = Needs.JACOBIAN

    def __init__(self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        self.beta = number(self, "beta", beta, low=0, high=1, open_high=True)
        self.beta_sigma = number(self, "beta_sigma", beta_sigma, low=0)
        self.eps = number(self, "eps", eps, low=0)
        self.register_buffer("grad_buffer", torch.zeros(0, 0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def transform_losses(self, losses: Tensor) -> Tensor:
        return db_mtl_log_losses(losses, self.eps)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        jac = jacobian.detach()
        if int(self.steps) == 0:
            self.grad_buffer = torch.zeros_like(jac)
        elif self.grad_buffer.shape != jac.shape:
            raise ValueError(f"DBMTL: the Jacobian has shape {tuple(jac.shape)}, but the gradient EMA has "
                             f"{tuple(self.grad_buffer.shape)}")
        self.steps += 1
        self.grad_buffer = db_mtl_ema(self.grad_buffer.to(jac), jac, self.beta, self.beta_sigma, int(self.steps))
        weights = db_mtl_weights(self.grad_buffer, self.eps)
        self.last_weights = weights
        return weights.to(jac) @ self.grad_buffer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "grad_buffer")
        if isinstance(saved, Tensor):
            self.grad_buffer = torch.empty(saved.shape, dtype=saved.dtype, device=self.grad_buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
