"""The interface every paper model shares: task-conditioned ``encode``, per-task heads, an explicit parameter split."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from models.task_norm import Connection, conditioned_on


class MultiTaskModel(nn.Module):
    """Base of the paper architectures (``encode(x[, task]) -> z``, ``head(task, z)``).

    A subclass builds ``self.heads`` (one ``nn.Sequential`` per task whose last layer is a biased conv), implements
    ``_encode(x)`` and ``head(task, z)``, fills ``self._connections`` when ``task_bn`` is on, and names any other
    task-specific modules in ``_task_modules``. Everything else is shared: the split is declared, never guessed.

    ``rep_unsupported`` is None, or the reason why ``z`` is not a representation that only task parameters read
    (then MGDA-UB style ``grad_source="rep_*"`` is refused by ``Method.check_model``).
    """

    rep_unsupported: str | None = None

    def __init__(self, head_channels: Mapping[str, int], task_bn: bool) -> None:
        super().__init__()
        if not head_channels:
            raise ValueError(f"{type(self).__name__}: head_channels is empty; at least one task is needed")
        bad = {t: c for t, c in head_channels.items() if not isinstance(c, int) or c < 1}
        if bad:
            raise ValueError(f"{type(self).__name__}: head_channels must be positive ints, got {bad}")
        self.task_names = list(head_channels)
        self.task_bn = bool(task_bn)
        self._connections: list[Connection] = []

    def _set_head_bias(self, head_bias: Mapping[str, float] | None) -> None:
        for name, bias in (head_bias or {}).items():
            if name not in self.heads:
                raise ValueError(f"{type(self).__name__}: head_bias names task {name!r}; tasks are {self.task_names}")
            nn.init.constant_(self.heads[name][-1].bias, bias)

    def connections(self) -> list[Connection]:
        """The shared convs each followed by per-task BatchNorm, in a fixed order (empty without ``task_bn``)."""
        return list(self._connections)

    def encode(self, x: Tensor, task: str | None = None) -> Tensor:
        """The shared representation; with ``task_bn`` it is task-conditioned and ``task`` is required."""
        if not self.task_bn:
            return self._encode(x)
        if task is None:
            raise ValueError(f"{type(self).__name__}(task_bn=True).encode needs a task, one of {self.task_names}")
        with conditioned_on(self, task):
            return self._encode(x, task)

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        raise NotImplementedError

    def head(self, task: str, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.task_bn:
            return {t: self.head(t, self.encode(x, t)) for t in self.task_names}
        z = self.encode(x)
        return {t: self.head(t, z) for t in self.task_names}

    def _task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        if task not in self.heads:
            raise KeyError(f"{type(self).__name__}: unknown task {task!r}; tasks are {self.task_names}")
        own = [p for m in self._task_modules(task) for p in m.parameters()]
        return own + [p for c in self._connections for p in c.norm.norms[task].parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]


class EncoderWithHeads(MultiTaskModel):
    """A shared ``self.encoder`` (image -> feature vector) and one ``self.heads[task]`` module per task, without
    per-task BatchNorm: the shape of the classification models."""

    def __init__(self, head_channels: Mapping[str, int]) -> None:
        super().__init__(head_channels, task_bn=False)

    def _encode(self, x: Tensor, task: str | None = None) -> Tensor:
        return self.encoder(x)

    def head(self, task: str, z: Tensor) -> Tensor:
        return self.heads[task](z)


def check_divisible(owner: str, x: Tensor, factor: int) -> None:
    """Raise unless the image's height and width are multiples of ``factor`` (the model's total stride)."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"{owner}: image size {tuple(x.shape[-2:])} must be divisible by {factor}")
