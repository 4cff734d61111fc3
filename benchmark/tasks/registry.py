"""The task-kind registry: ``KINDS[spec.kind]`` is the :class:`~benchmark.tasks.base.TaskKind` of a spec.

Built-ins register with ``@register("name")`` on a ``TaskKind`` subclass; the registry keeps one instance each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from benchmark.names import unknown_name
from benchmark.tasks.base import MetricInfo, TaskKind
from datamodules.task_spec import TaskSpec


class KindRegistry(Mapping[str, TaskKind]):
    """Name -> task kind; an unknown name lists the nearest registered ones."""

    def __init__(self) -> None:
        self._kinds: dict[str, TaskKind] = {}

    def __getitem__(self, name: str) -> TaskKind:
        if name not in self._kinds:
            raise unknown_name("task kind", name, self._kinds)
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def add(self, name: str, kind: TaskKind) -> None:
        if name in self._kinds:
            raise ValueError(f"task kind {name!r} registered twice ({type(self._kinds[name]).__module__}, "
                             f"{type(kind).__module__})")
        kind.name = name
        self._kinds[name] = kind

    def of(self, spec: TaskSpec) -> TaskKind:
        """``self[spec.kind]``, after checking the spec fields that kind needs or refuses."""
        if spec.kind not in self._kinds:
            unknown = unknown_name("task kind", spec.kind, self).args[0]
            raise ValueError(f"TaskSpec {spec.name!r}: kind={spec.kind!r}: {unknown}")
        kind = self._kinds[spec.kind]
        if kind.needs_classes and (spec.num_classes is None or spec.num_classes < 2):
            raise ValueError(f"TaskSpec {spec.name!r}: {spec.kind} needs num_classes >= 2, got {spec.num_classes}")
        if spec.pos_weight is not None and not kind.weighted:
            raise ValueError(f"TaskSpec {spec.name!r}: pos_weight={spec.pos_weight!r} needs a kind in "
                             f"{self.weighted()}")
        if spec.loss_variant not in ("", *kind.loss_variants):
            raise ValueError(f"TaskSpec {spec.name!r}: loss_variant={spec.loss_variant!r} is not one of "
                             f"{['', *kind.loss_variants]} for kind {spec.kind!r}")
        return kind

    def metric_infos(self, specs: Sequence[TaskSpec]) -> dict[str, MetricInfo]:
        """``{"<task>/<metric>": MetricInfo}`` over all tasks, in task then metric order."""
        return {f"{s.name}/{m.key}": m for s in specs for m in self.of(s).metrics}

    def metric_table(self, specs: Sequence[TaskSpec]) -> dict[str, dict]:
        """The record's ``metrics`` field: direction and unit of every metric, keyed ``<task>/<metric>``."""
        return {key: {"direction": m.direction, "unit": m.unit} for key, m in self.metric_infos(specs).items()}

    def weighted(self) -> tuple[str, ...]:
        """Kinds that take a ``pos_weight``."""
        return tuple(name for name, kind in self._kinds.items() if kind.weighted)


KINDS = KindRegistry()


def register(name: str) -> Callable[[type[TaskKind]], type[TaskKind]]:
    """Class decorator adding a task kind (one instance of the class) under ``name``."""

    def add(cls: type[TaskKind]) -> type[TaskKind]:
        if not (isinstance(cls, type) and issubclass(cls, TaskKind)):
            raise TypeError(f"@register({name!r}) expects a TaskKind subclass, got {cls!r}")
        KINDS.add(name, cls())
        return cls

    return add
