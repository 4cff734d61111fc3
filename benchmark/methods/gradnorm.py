"""GradNorm: learn loss weights that equalise the weighted gradient norms (docs/methods.md §5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, number
from benchmark.methods.registry import register

INITIAL_LOSSES = ("epoch0_mean", "first_step")


def gradnorm_weights(beta: Tensor) -> Tensor:
    """``w = T softmax(beta)``: positive weights summing to ``T`` (LibMTL's parameterisation)."""
    return len(beta) * torch.softmax(beta, dim=0)


def gradnorm_targets(weighted_norms: Tensor, relative_losses: Tensor, alpha: float) -> Tensor:
    """The target norms ``Gbar r_t^alpha`` (Chen et al.), ``Gbar = mean_t G_t``, ``r_t = Ltilde_t / mean(Ltilde)``."""
    ratios = relative_losses / relative_losses.mean()
    return weighted_norms.mean() * ratios.pow(alpha)


def gradnorm_balance_loss(beta: Tensor, norms: Tensor, relative_losses: Tensor, alpha: float) -> Tensor:
    """The gradient loss ``L_grad = sum_t |G_t - [Gbar r_t^alpha]_const|`` with ``G_t = w_t |g_t|`` (Chen et al.,
    ICML 2018), differentiable in ``beta`` (the targets are detached, as in the paper and LibMTL)."""
    weighted = gradnorm_weights(beta) * norms
    return (weighted - gradnorm_targets(weighted, relative_losses, alpha).detach()).abs().sum()


def gradnorm_beta_grad(beta: Tensor, norms: Tensor, relative_losses: Tensor, alpha: float) -> Tensor:
    """``dL_grad / dbeta`` in closed form: with ``s_t = sign(G_t - target_t)`` and ``z = softmax(beta)``,
    ``dG_t / dbeta_k = G_t (delta_tk - z_k)``, so the gradient is ``s * G - z sum_t s_t G_t``; 0 where every
    ``G_t`` equals its target (``sign(0) = 0``, autograd's subgradient of ``|.|`` at 0)."""
    z = torch.softmax(beta, dim=0)
    weighted = len(beta) * z * norms
    signed = torch.sign(weighted - gradnorm_targets(weighted, relative_losses, alpha)) * weighted
    return signed - z * signed.sum()


@register("gradnorm")
class GradNorm(Method):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", ICML 2018, arXiv 1711.02257: target norms and gradient loss
    ``L_grad``), in LibMTL's form.

    * ``w = T softmax(beta)`` (``beta`` an ``nn.Parameter``, init 1; the weights always sum to ``T``, no
      renormalisation); ``G_t = w_t |g_t| = w_t sqrt(M_tt)``: the Gramian's diagonal is all it needs, on every
      shared parameter (``grad_source="params"``) or on the representation (``rep_full``/``rep_batchsum``).
    * Update ``d = sum_t w_t g_t`` with the weights before this step's ``beta`` update; heads own gradient.
    * ``beta``'s gradient is :func:`gradnorm_beta_grad` of :func:`gradnorm_balance_loss`, written into
      ``beta.grad`` at each step and applied by the model's optimizer (the method's group, no weight decay) at
      ``lr`` (None: the model's learning rate, as LibMTL's main optimizer).
    * ``initial_loss``: ``L_t(0)`` is the mean training loss of epoch 0 (``epoch0_mean``, LibMTL; epoch 0 then
      runs EW, ``w = 1``, and GradNorm starts at epoch 1) or the first step's losses (``first_step``, the paper).
    * ``alpha = 1.5`` (NYUv2). docs/methods.md §5 Recommended: the LibMTL parameterisation; the paper's choice of the
      last shared layer (``norm_on: last_shared_layer``) needs per-layer gradient norms, which the engine does
      not compute, and is not offered.
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, alpha: float = 1.5, initial_loss: str = "epoch0_mean",
                 lr: float | None = None, grad_source: str = "params", head_weighting: str = "own") -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.alpha = number(self, "alpha", alpha, low=0)
        self.initial_loss = choice(self, "initial_loss", initial_loss, INITIAL_LOSSES)
        self.lr = self.param_lr = number(self, "lr", lr, low=0, open_low=True, none=True)
        self.beta = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_steps", torch.zeros((), dtype=torch.long))

    def _start(self, initial: Tensor) -> None:
        if not bool(torch.all(torch.isfinite(initial) & (initial > 0))):
            raise ValueError(f"GradNorm: the initial losses L(0) must be positive and finite, got {initial.tolist()}")
        self.initial_losses.copy_(initial)
        self.started.fill_(True)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        losses = losses.detach().to(self.initial_losses)
        if not self.started and self.initial_loss == "first_step":
            self._start(losses)
        if not self.started:
            self.epoch_sum += losses
            self.epoch_steps += 1
            self.last_weights = torch.ones(self.num_tasks, dtype=torch.float64, device=gramian.device)
            return self.last_weights
        beta = self.beta.detach().double().to(gramian.device)
        norms = gramian.detach().double().diagonal().clamp(min=0.0).sqrt()
        relative = (losses / self.initial_losses).to(gramian.device)
        if not (torch.isfinite(relative).all() and relative.mean() > 0):
            raise FloatingPointError(f"GradNorm: relative losses {relative.tolist()} (losses {losses.tolist()}, "
                                     f"L(0) {self.initial_losses.tolist()}) must be finite with a positive mean")
        grad = gradnorm_beta_grad(beta, norms, relative, self.alpha).to(self.beta)
        self.beta.grad = grad if self.beta.grad is None else self.beta.grad + grad
        self.step_stats = {"balance_loss": float(gradnorm_balance_loss(beta, norms, relative, self.alpha))}
        self.last_weights = gradnorm_weights(beta)
        return self.last_weights

    def on_train_epoch_end(self) -> None:
        if not self.started and self.epoch_steps > 0:
            self._start(self.epoch_sum / self.epoch_steps)
