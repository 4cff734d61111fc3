"""DWA: Dynamic Weight Average (docs/methods.md §4)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, integer, number
from benchmark.methods.registry import register

MODES = ("epoch", "window")
UPDATE_SCALES = ("native", "sum", "mean")


def dwa_weights(prev: Tensor, prevprev: Tensor, tau: float) -> Tensor:
    """``w_t = T softmax_t(r / tau)`` with ``r_t = prev_t / prevprev_t`` (the losses of the last two periods).

    The weights sum to ``T``; equal ratios give all ones, and so does ``tau -> inf``.
    """
    ratio = prev / prevprev
    if not torch.isfinite(ratio).all():
        raise FloatingPointError(f"DWA: loss ratios {ratio.tolist()} are not finite "
                                 f"(previous losses {prev.tolist()}, the ones before {prevprev.tolist()})")
    return len(ratio) * torch.softmax(ratio / tau, dim=0)


def window_means(fifo: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The means of the newer and of the older ``window`` rows of a ``[2 window, T]`` FIFO of step losses."""
    return fifo[window:].mean(dim=0), fifo[:window].mean(dim=0)


@register("dwa")
class DWA(Method):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
    arXiv 1803.10704): ``w_t(k) = T exp(r_t(k-1) / tau) / sum_i exp(r_i(k-1) / tau)``, with
    ``r_t(k-1) = Lbar_t(k-1) / Lbar_t(k-2)``, and the loss ``sum_t w_t L_t``.

    * ``mode="epoch"`` (default, the paper, MTAN and LibMTL): ``Lbar_t(k)`` is the mean training loss of epoch
      ``k`` (accumulated in :meth:`loss_weights`, closed by :meth:`on_train_epoch_end`); epochs 0 and 1 use
      ``w = 1``. Training batches are equal-sized (``drop_last``), so the mean over steps equals LibMTL's
      batch-size-weighted mean.
    * ``mode="window"`` (the nash-mtl/FAMO ``DynamicWeightAverage``): a FIFO of the last ``2 window`` step losses,
      initialised with ones as in that code, the current step's losses included; from step index
      ``window + 1`` on, ``r`` = mean of the newer ``window`` / mean of the older ``window``, updated every step.
    * ``update_scale``: ``sum`` (weights sum to ``T``), ``mean`` (divided by ``T``, the nash-mtl
      ``(w * losses).mean()``) or ``native`` (``sum`` for ``epoch``, ``mean`` for ``window``; docs/methods.md §0.3).
    """

    needs = Needs.LOSSES

    def __init__(self, num_tasks: int, tau: float = 2.0, mode: str = "epoch", window: int = 25,
                 update_scale: str = "native") -> None:
        super().__init__(num_tasks)
        self.tau = number(self, "tau", tau, low=0, open_low=True)
        self.mode = choice(self, "mode", mode, MODES)
        self.window = integer(self, "window", window, 1)
        self.update_scale = choice(self, "update_scale", update_scale, UPDATE_SCALES)
        self.register_buffer("weights", torch.ones(num_tasks, dtype=torch.float64))
        if mode == "epoch":
            self.register_buffer("history", torch.ones(2, num_tasks, dtype=torch.float64))  # [k-2, k-1]
            self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
            self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
            self.register_buffer("epoch_steps", torch.zeros((), dtype=torch.long))
        else:
            self.register_buffer("fifo", torch.ones(2 * window, num_tasks, dtype=torch.float64))
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def scale(self) -> float:
        """The factor applied to the sum-``T`` weights."""
        mean = self.update_scale == "mean" or (self.update_scale == "native" and self.mode == "window")
        return 1.0 / self.num_tasks if mean else 1.0

    def loss_weights(self, losses: Tensor) -> Tensor:
        dtype, losses = losses.dtype, losses.detach().to(self.weights)
        if self.mode == "epoch":
            self.epoch_sum += losses
            self.epoch_steps += 1
        else:
            self.fifo.copy_(torch.cat([self.fifo[1:], losses[None]]))
            if self.steps > self.window:
                self.weights.copy_(dwa_weights(*window_means(self.fifo, self.window), self.tau))
            self.steps += 1
        self.last_weights = (self.scale * self.weights).to(dtype)
        return self.last_weights

    def on_train_epoch_end(self) -> None:
        if self.mode != "epoch" or self.epoch_steps == 0:
            return
        self.history.copy_(torch.stack([self.history[1], self.epoch_sum / self.epoch_steps]))
        self.epochs_seen += 1
        self.epoch_sum.zero_()
        self.epoch_steps.zero_()
        if self.epochs_seen >= 2:
            self.weights.copy_(dwa_weights(self.history[1], self.history[0], self.tau))

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """The current weights applied to the Jacobian (no loss is recorded)."""
        return (self.scale * self.weights).to(jacobian) @ jacobian
