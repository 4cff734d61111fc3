"""What every task kind provides (:class:`TaskKind`), its metric descriptor (:class:`MetricInfo`) and the metric
options a suite sets (:class:`MetricOptions`).

Target conventions are those of :class:`datamodules.task_spec.TaskSpec`. Every metric accumulates sum states
(``dist_reduce_fx="sum"``), so a DDP sync gives the number a single process would compute over the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics import Metric

from datamodules.task_spec import TaskSpec

UNIT_DECIMALS = {"percent": 2, "degrees": 2, "metres": 4, "ratio": 4, "inverse_depth": 4, "fraction": 4}
"""Decimals a table prints per unit; any other unit gets :data:`DEFAULT_DECIMALS`."""
DEFAULT_DECIMALS = 4
DIRECTIONS = ("higher", "lower")
AGGREGATIONS = ("global", "per_batch")


def decimals_for(unit: str | None) -> int:
    """Decimals of a metric measured in ``unit`` (None or unknown: :data:`DEFAULT_DECIMALS`)."""
    return UNIT_DECIMALS.get(unit or "", DEFAULT_DECIMALS)


@dataclass(frozen=True)
class MetricInfo:
    """One reported metric: its ``key``, ``direction`` ("higher" | "lower" is better), ``unit`` and the
    ``decimals`` a table prints (default: :func:`decimals_for` of the unit)."""

    key: str
    direction: str
    unit: str | None = None
    decimals: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"MetricInfo {self.key!r}: direction={self.direction!r} is not one of {DIRECTIONS}")
        if self.decimals < 0:
            object.__setattr__(self, "decimals", decimals_for(self.unit))


@dataclass(frozen=True)
class MetricOptions:
    """How the split-level metrics aggregate (docs/protocols.md §M.2-M.3).

    ``aggregation``: ``global`` pools every valid pixel of the split (LibMTL, Vandenhende); ``per_batch``
    computes depth and normal errors per batch and averages them over the batches with equal weight (MTAN,
    nash-mtl, CAGrad, FAMO). ``depth_clamp``: depth predictions <= 0 become this value before the depth errors
    (Vandenhende's 1e-9, protocol P3); None leaves them as they are.
    """

    aggregation: str = "global"
    depth_clamp: float | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"MetricOptions: aggregation={self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.depth_clamp is not None and not self.depth_clamp > 0:
            raise ValueError(f"MetricOptions: depth_clamp={self.depth_clamp!r} must be > 0 or None")


class TaskKind:
    """One kind of task: head size, loss, prediction, metric and its descriptors, spec and target checks.

    Subclasses set ``metrics`` and implement :meth:`head_channels`, :meth:`loss` and :meth:`make_metric`;
    register one with ``@register("name")`` (:mod:`benchmark.tasks.registry`).
    """

    name: str = ""
    metrics: tuple[MetricInfo, ...] = ()
    needs_classes: bool = False
    """The spec must give ``num_classes >= 2``."""
    weighted: bool = False
    """The spec may give a ``pos_weight`` (balanced BCE)."""
    loss_variants: tuple[str, ...] = ()
    """Names a ``TaskSpec.loss_variant`` may take besides "" (the default loss)."""

    def head_channels(self, spec: TaskSpec) -> int:
        raise NotImplementedError

    def predict(self, raw: Tensor) -> Tensor:
        """Head output -> prediction (default: unchanged)."""
        return raw

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss averaged over the valid elements."""
        raise NotImplementedError

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        """A fresh split-level metric; ``.compute()`` returns a dict keyed by ``metrics``."""
        raise NotImplementedError

    def target_shape(self, spec: TaskSpec, b: int, h: int, w: int) -> tuple[tuple[int, ...], str]:
        """The expected target shape and its pattern, e.g. ``((2, 1, 4, 4), "(B, 1, H, W)")``."""
        c = self.head_channels(spec)
        return (b, c, h, w), f"(B, {c}, H, W)"

    def check_target(self, spec: TaskSpec, t: Tensor, b: int, h: int, w: int) -> None:
        """Shape always, then :meth:`check_values`; raises ``ValueError`` naming the task."""
        shape, pattern = self.target_shape(spec, b, h, w)
        if tuple(t.shape) != shape:
            raise ValueError(
                f"task {spec.name!r}: target shape {tuple(t.shape)} does not match the expected {pattern} = {shape}"
            )
        self.check_values(spec, t)

    def check_values(self, spec: TaskSpec, t: Tensor) -> None:
        """Default for dense float maps: a floating dtype."""
        if not t.is_floating_point():
            raise ValueError(f"task {spec.name!r}: target dtype {t.dtype} does not match the expected floating dtype")


class LabelMetric(Metric):
    """Base of the metrics over ``num_classes`` (>= 2) labels with an ``ignore_index``; higher is better."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)


def check_raw_shape(spec: TaskSpec, raw: Tensor, target: Tensor) -> None:
    """Guard against silent broadcasting between the head output and a dense target of the same shape."""
    if raw.shape != target.shape:
        raise ValueError(
            f"task {spec.name!r}: prediction shape {tuple(raw.shape)} does not match the expected "
            f"{tuple(target.shape)}"
        )


def nan_dict(keys) -> dict[str, Tensor]:
    return {k: torch.tensor(float("nan")) for k in keys}
