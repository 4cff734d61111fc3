"""Per-task BatchNorm after a shared conv, and the explicit conv-to-BN pairing CSO reads its strengths from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn


class TaskBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per task on the same features; ``forward`` uses the active task's BN.

    The active task is set by :func:`conditioned_on`; calling it without one is an error, so a shared forward
    pass can never silently mix statistics of different tasks.
    """

    def __init__(self, num_features: int, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("TaskBatchNorm2d: tasks is empty")
        self.norms = nn.ModuleDict({t: nn.BatchNorm2d(num_features) for t in tasks})
        self.active: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.active is None:
            raise RuntimeError("TaskBatchNorm2d called with no active task: run the model under conditioned_on(task)")
        return self.norms[self.active](x)


@dataclass(frozen=True)
class Connection:
    """A shared conv whose output channels feed one BN per task (CSO's "connection", Jeong & Yoon 2024, §4.2)."""

    name: str
    conv: nn.Conv2d
    norm: TaskBatchNorm2d


@contextmanager
def conditioned_on(module: nn.Module, task: str) -> Iterator[None]:
    """Run every :class:`TaskBatchNorm2d` inside ``module`` with ``task``'s BN for the duration of the block."""
    norms = [m for m in module.modules() if isinstance(m, TaskBatchNorm2d)]
    for m in norms:
        if task not in m.norms:
            raise KeyError(f"task {task!r} has no BatchNorm here; tasks are {list(m.norms)}")
        m.active = task
    try:
        yield
    finally:
        for m in norms:
            m.active = None
