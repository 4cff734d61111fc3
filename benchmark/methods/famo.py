"""FAMO: fast adaptive multitask optimization (docs/methods.md §15)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, flag, number
from benchmark.methods.registry import register

OPTIMIZERS = ("adam", "sgd")
EPS = 1e-8
"""The offset in ``D_t = L_t - l*_t + EPS`` (the official code's)."""


def famo_gaps(losses: Tensor, min_losses: Tensor) -> Tensor:
    """``D_t = L_t - l*_t + 1e-8``; raises if one is not positive (its log is undefined)."""
    gaps = losses - min_losses.to(losses) + EPS
    if not (torch.isfinite(gaps) & (gaps > 0)).all():
        raise ValueError(f"FAMO: needs every loss above its minimum l*, got losses={losses.tolist()}, "
                         f"l*={min_losses.tolist()}")
    return gaps


def famo_weights(logits: Tensor, losses: Tensor, min_losses: Tensor | None = None) -> Tensor:
    """Effective weights ``z_t / (c D_t)`` of the raw losses, with ``z = softmax(logits)`` and
    ``c = sum_t z_t / D_t``: the gradient of ``sum_t z_t log D_t / c`` (c detached). Positive, summing to 1."""
    min_losses = torch.zeros_like(logits) if min_losses is None else min_losses
    ratio = torch.softmax(logits.detach(), dim=0).to(losses) / famo_gaps(losses.detach(), min_losses)
    return ratio / ratio.sum()


def famo_logit_grad(logits: Tensor, before: Tensor, after: Tensor, min_losses: Tensor | None = None) -> Tensor:
    """The gradient of the logits: ``J_softmax(logits)^T delta`` with ``delta_t = log D_t(before) - log D_t(after)``,
    i.e. ``z * (delta - z . delta)``; zero when every log-loss decreased by the same amount."""
    min_losses = torch.zeros_like(logits) if min_losses is None else min_losses
    delta = famo_gaps(before, min_losses).log() - famo_gaps(after, min_losses).log()
    z = torch.softmax(logits, dim=0)
    delta = delta.to(z)
    return z * (delta - z @ delta)


@register("famo")
class FAMO(Method):
    """FAMO (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, arXiv 2306.03792,
    Algorithm 1 in the official code's form).

    * Model step: the loss ``sum_t z_t log D_t / c`` with ``z = softmax(xi)``, ``D_t = L_t - l*_t + 1e-8`` and
      ``c = sum_t z_t / D_t`` detached, i.e. the engine back-propagates ``sum_t w_t L_t`` with the effective
      weights ``w_t = z_t / (c D_t)`` (:func:`famo_weights`, summing to 1; the heads are weighted).
    * Weight step (:meth:`after_step`, after ``optimizer.step()`` on the same batch): ``grad_xi`` from
      :func:`famo_logit_grad` is written into ``xi.grad`` and the method's own optimizer steps: ``"adam"``
      (the code: ``torch.optim.Adam``, lr ``lr``, L2 weight decay ``gamma``) or ``"sgd"`` (the paper:
      ``torch.optim.SGD``, ``xi <- xi - lr (grad + gamma xi)``).
    * ``xi`` is a buffer (a leaf that does not require grad: the model's optimizer never sees it); the inner
      optimizer is created at the first weight step (and again if ``xi`` is replaced, e.g. by ``.to()``), and
      its ``state_dict()`` is saved with the module (``get_extra_state``), so a restored FAMO resumes exactly.
    * ``min_losses``: ``l*`` (default 0, as in every dense benchmark). ``bn_update``: the after-step forward pass
      updates BatchNorm running statistics, as the FAMO repo (docs/methods.md §0.6; off by default).
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int, lr: float = 0.025, gamma: float = 1e-3, optimizer: str = "adam",
                 min_losses: Sequence[float] | None = None, bn_update: bool = False) -> None:
        super().__init__(num_tasks)
        self.lr = number(self, "lr", lr, low=0, open_low=True)
        self.gamma = number(self, "gamma", gamma, low=0)
        self.optimizer = choice(self, "optimizer", optimizer, OPTIMIZERS)
        if min_losses is not None and (len(min_losses) != num_tasks
                                       or not all(math.isfinite(float(v)) for v in min_losses)):
            raise ValueError(f"FAMO: min_losses={list(min_losses)} must be {num_tasks} finite numbers")
        self.min_losses = None if min_losses is None else [float(v) for v in min_losses]
        self.bn_update = self.after_step_updates_bn = flag(self, "bn_update", bn_update)
        self.register_buffer("logits", torch.zeros(num_tasks))
        self._inner: torch.optim.Optimizer | None = None
        self._inner_state: dict | None = None
        self.register_buffer("offsets", torch.tensor(self.min_losses or [0.0] * num_tasks))
        self.after_step_skips = 0

    def loss_weights(self, losses: Tensor) -> Tensor:
        self.last_weights = famo_weights(self.logits, losses, self.offsets)
        return self.last_weights

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        if losses is None:
            raise ValueError("FAMO: aggregate needs the task losses")
        return famo_weights(self.logits, losses, self.offsets).to(jacobian) @ jacobian

    @torch.no_grad()
    def after_step(self, losses_before: Tensor, losses_after: Tensor) -> None:
        if not torch.isfinite(losses_after).all():
            self.after_step_skips += 1
            return
        self.logits.grad = famo_logit_grad(self.logits, losses_before, losses_after, self.offsets).to(self.logits)
        self.inner_optimizer().step()
        self.logits.grad = None

    def inner_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of ``xi`` (Adam or SGD, weight decay ``gamma``), created lazily on the current ``xi``
        and loaded with the saved state, if any."""
        if self._inner is None or self._inner.param_groups[0]["params"][0] is not self.logits:
            state = self._inner_state if self._inner is None else self._inner.state_dict()
            cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
            self._inner = cls([self.logits], lr=self.lr, weight_decay=self.gamma)
            if state is not None:
                self._inner.load_state_dict(copy.deepcopy(state))
            self._inner_state = None
        return self._inner

    def get_extra_state(self) -> dict:
        state = self._inner_state if self._inner is None else self._inner.state_dict()
        return {**super().get_extra_state(), "optimizer": copy.deepcopy(state),
                "after_step_skips": self.after_step_skips}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self._inner, self._inner_state = None, copy.deepcopy(state["optimizer"])
        self.after_step_skips = int(state["after_step_skips"])

    def stats(self) -> dict[str, float]:
        return {**super().stats(), **{f"logit_{t}": float(x) for t, x in enumerate(self.logits.tolist())},
                "after_step_skips": float(self.after_step_skips)}
