"""The optimiser and the learning-rate schedule of a run, built from plain settings (``OptimConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LR_SCHEDULES = ("constant", "cosine", "step", "step_shifted", "poly")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimConfig:
    """``optimizer`` (``adam``, or ``sgd`` with ``momentum``) at ``lr``, with ``weight_decay`` on the model;
    ``lr_schedule``: ``constant``, ``cosine`` (per batch, to 0), ``step`` (x ``lr_gamma`` every ``lr_step_size``
    epochs), ``step_shifted`` (the same one epoch earlier: from epoch ``lr_step_size - 1`` on, as Sener & Koltun's
    trainer's ``(epoch + 1) % 10 == 0``; docs/protocols.md P6/P7) or ``poly`` ((1 - epoch/epochs)^0.9)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    lr_schedule: str = "constant"
    lr_step_size: int = 100
    lr_gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def make_optimizer(config: OptimConfig, model: nn.Module, method: nn.Module) -> torch.optim.Optimizer:
    """One group for the model (with weight decay) and one for the method's trainable parameters, if any
    (no weight decay; at the method's ``param_lr`` when it sets one)."""
    groups = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    method_params = [p for p in method.parameters() if p.requires_grad]
    if method_params:
        lr = {} if method.param_lr is None else {"lr": method.param_lr}
        groups.append({"params": method_params, "weight_decay": 0.0, **lr})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)


def make_schedule(config: OptimConfig, optimizer: torch.optim.Optimizer, steps: int,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-batch schedule over ``steps`` batches in ``epochs`` epochs; None for ``constant``."""
    if config.lr_schedule == "constant":
        return None
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    per_epoch = max(steps // epochs, 1)
    if config.lr_schedule in ("step", "step_shifted"):
        factor = _StepFactor(per_epoch, config.lr_step_size, config.lr_gamma, int(config.lr_schedule != "step"))
    else:
        factor = _PolyFactor(per_epoch, epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _StepFactor:
    def __init__(self, per_epoch: int, step_size: int, gamma: float, shift: int = 0) -> None:
        self.per_epoch, self.step_size, self.gamma, self.shift = per_epoch, step_size, gamma, shift

    def __call__(self, step: int) -> float:
        return self.gamma ** ((step // self.per_epoch + self.shift) // self.step_size)


class _PolyFactor:
    def __init__(self, per_epoch: int, epochs: int, power: float = 0.9) -> None:
        self.per_epoch, self.epochs, self.power = per_epoch, epochs, power

    def __call__(self, step: int) -> float:
        return max(1.0 - (step // self.per_epoch) / self.epochs, 0.0) ** self.power
