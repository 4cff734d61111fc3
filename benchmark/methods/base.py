"""The method contract: what a multi-task optimization method declares and computes.

A method declares in ``needs`` the cheapest object it uses, and the engine computes only that:

* ``Needs.LOSSES``: the task losses; the method returns loss weights ``w`` and the engine back-propagates
  ``sum(w * losses)`` once.
* ``Needs.GRAMIAN``: the ``T x T`` Gramian ``M = G G^T`` of the per-task gradients (float64); the method
  returns weights ``alpha`` and the engine writes ``alpha @ G`` into the shared gradients. The method never
  sees ``G`` itself.
* ``Needs.JACOBIAN``: the full ``T x P`` Jacobian; the method returns the direction.

Gradient methods choose where their gradients come from with ``grad_source``: ``params`` (the shared
parameters), ``rep_full`` (the gradient w.r.t. the shared representation ``z``, flattened over batch and
features, as the official MGDA-UB code) or ``rep_batchsum`` (summed over the batch first, as LibMTL).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.methods.hparams import choice, constructor_hparams

GRAD_SOURCES = ("params", "rep_full", "rep_batchsum")
HEAD_WEIGHTINGS = ("own", "weighted")


class Needs(enum.Enum):
    LOSSES = "losses"
    GRAMIAN = "gramian"
    JACOBIAN = "jacobian"


@dataclass
class StepContext:
    """What a method that drives its own step (``Method.own_step``) may use.

    ``losses()`` runs a fresh forward pass on the batch and returns the task losses ``[T]`` (times the suite's
    ``train.loss_weights``, if set); ``task_loss(name)`` runs a fresh forward pass for one task (conditioned on it
    if the model has per-task BatchNorm) and returns its loss, weighted the same; ``backward(loss)``
    back-propagates through Lightning's precision hooks; ``finite(losses)`` is False if a loss is NaN/inf (after
    raising or counting a skip, per ``nan_policy``: the method must then abandon the step); ``epoch`` counts from
    0 up to ``epochs - 1``.
    """

    model: nn.Module
    task_names: list[str]
    batch: Any
    optimizer: Any
    losses: Callable[[], Tensor]
    task_loss: Callable[[str], Tensor]
    backward: Callable[[Tensor], None]
    finite: Callable[[Tensor], bool]
    epoch: int
    epochs: int


class Method(nn.Module):
    """Base class of every method. Subclasses set ``needs`` and implement the matching hook.

    Learnable state (e.g. IMTL-L's scales) is registered as ``nn.Parameter`` so that it is checkpointed and
    optimised (in its own parameter group, without weight decay, at the learning rate ``param_lr``, or the
    model's when ``None``). Each constructor argument is kept as the attribute of its name, so ``hparams()``
    needs no override.
    """

    needs: Needs = Needs.LOSSES
    param_lr: float | None = None
    """Learning rate of the method's own parameter group (e.g. UW's 0.025, docs/methods.md §3); None: the model's."""
    after_step_updates_bn: bool = False
    """Whether the re-evaluation before ``after_step`` updates BatchNorm running statistics (docs/methods.md §0.6)."""

    def __init__(self, num_tasks: int, grad_source: str = "params", head_weighting: str = "own") -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be a positive int, got {num_tasks!r}")
        choice(self, "grad_source", grad_source, GRAD_SOURCES)
        choice(self, "head_weighting", head_weighting, HEAD_WEIGHTINGS)
        if self.needs is Needs.LOSSES and grad_source != "params":
            raise ValueError(f"{type(self).__name__} weights losses only; grad_source={grad_source!r} is meaningless")
        self.num_tasks = num_tasks
        self.grad_source = grad_source
        self.head_weighting = head_weighting
        self.last_weights: Tensor | None = None
        self._rng: torch.Generator | None = None
        self.step_stats: dict[str, float] = {}

    def transform_losses(self, losses: Tensor) -> Tensor:
        """Map the raw task losses ``[T]`` to the losses the method optimises (identity by default)."""
        return losses

    def loss_weights(self, losses: Tensor) -> Tensor:
        """``Needs.LOSSES``: weights ``[T]`` of the (transformed) losses."""
        raise NotImplementedError(f"{type(self).__name__} does not weight losses")

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """``Needs.GRAMIAN``: weights ``[T]`` from the float64 Gramian ``[T, T]`` and the losses ``[T]``."""
        raise NotImplementedError(f"{type(self).__name__} does not work on the Gramian")

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Pure aggregation of a ``[T, P]`` Jacobian into a direction ``[P]``.

        Gramian methods get this for free: the weights are computed on ``J J^T`` in float64.
        """
        if self.needs is Needs.GRAMIAN:
            if losses is None:
                losses = torch.ones(jacobian.shape[0], dtype=jacobian.dtype, device=jacobian.device)
            j64 = jacobian.double()
            weights = self.gramian_weights(j64 @ j64.T, losses.detach().double())
            return (weights.to(jacobian.dtype) @ jacobian)
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate()")

    def check_model(self, model: nn.Module) -> None:
        """Raise if the method cannot train ``model`` (e.g. CSO without per-task BatchNorm, or ``grad_source="rep_*"``
        on a model whose ``rep_unsupported`` gives the reason its ``z`` is not a shared representation)."""
        reason = getattr(model, "rep_unsupported", None)
        if self.grad_source != "params" and reason:
            raise ValueError(f"{type(self).__name__}: grad_source={self.grad_source!r} is unavailable: {reason}; "
                             "use grad_source='params'")

    def own_step(self, ctx: StepContext) -> bool:
        """Take the whole training step (e.g. CSO's Phase 1: one optimizer step per task) and return True, or
        return False to let the engine take the usual step. Called before the engine on every step."""
        return False

    def after_step(self, losses_before: Tensor, losses_after: Tensor) -> None:
        """Hook run after ``optimizer.step()`` with the losses re-evaluated on the same batch (FAMO)."""

    @property
    def wants_after_step(self) -> bool:
        return type(self).after_step is not Method.after_step

    def on_train_epoch_end(self) -> None:
        """Hook run at the end of every training epoch (DWA's epoch-average losses)."""

    def generator(self) -> torch.Generator:
        """The method's own RNG (PCGrad's permutations, RLW's draws, ...): seeded once from the global RNG at first
        use and saved in the state dict (``get_extra_state``), so a resumed run draws the same numbers."""
        if self._rng is None:
            self._rng = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        return self._rng

    def get_extra_state(self) -> dict:
        return {"rng": None if self._rng is None else self._rng.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self._rng = None
        if state.get("rng") is not None:
            self._rng = torch.Generator()
            self._rng.set_state(state["rng"])

    def stats(self) -> dict[str, float]:
        """Scalars to log after each step: the current task weights plus ``step_stats``, which a method fills
        with its own per-step diagnostics (solver iterations, ranks, projection rates, ...)."""
        weights = {} if self.last_weights is None else {
            f"weight_{t}": float(w) for t, w in enumerate(self.last_weights.tolist())}
        return {**weights, **self.step_stats}

    def hparams(self) -> dict:
        """The constructor arguments that define this method, recorded in every result: the attribute of each
        argument's name (:func:`~benchmark.methods.hparams.constructor_hparams`)."""
        return constructor_hparams(self)
