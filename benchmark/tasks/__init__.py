"""Task kinds as a registry: ``KINDS[spec.kind]`` gives a kind's head size, loss, prediction, metric (torchmetrics),
metric descriptors (:class:`MetricInfo`) and target check; one file per kind family, in the shape of
``benchmark/methods/``. Metric definitions: docs/protocols.md §M.

Importing this package registers every built-in kind. The functions below are the dispatch the module, runner and
tests call; each is ``KINDS.of(spec)`` (``KINDS[spec.kind]`` plus its spec check) and one method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor
from torchmetrics import Metric

import benchmark.tasks.binary_maps  # noqa: F401  (registration)
import benchmark.tasks.depth  # noqa: F401
import benchmark.tasks.image  # noqa: F401
import benchmark.tasks.labels  # noqa: F401
import benchmark.tasks.normals  # noqa: F401
from benchmark.tasks.base import (
    DEFAULT_DECIMALS,
    UNIT_DECIMALS,
    MetricInfo,
    MetricOptions,
    TaskKind,
    decimals_for,
)
from benchmark.tasks.registry import KINDS, register
from datamodules.task_spec import TaskSpec

__all__ = [
    "DEFAULT_DECIMALS",
    "KINDS",
    "UNIT_DECIMALS",
    "MetricInfo",
    "MetricOptions",
    "TaskKind",
    "check_specs",
    "decimals_for",
    "head_channels",
    "make_metric",
    "metric_directions",
    "metric_infos",
    "metric_table",
    "predict",
    "register",
    "task_loss",
    "validate_batch",
]


def check_specs(specs: Sequence[TaskSpec]) -> None:
    """Every spec names a registered kind and gives the fields that kind needs (``ValueError`` otherwise)."""
    for spec in specs:
        KINDS.of(spec)


def head_channels(spec: TaskSpec) -> int:
    """Output channels of the task head."""
    return KINDS.of(spec).head_channels(spec)


def predict(spec: TaskSpec, raw: Tensor) -> Tensor:
    """Head output -> prediction (normals unit-normalised, saliency and edge logits to probabilities)."""
    return KINDS.of(spec).predict(raw)


def task_loss(spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
    """Scalar training loss of one task (MTAN / nash-mtl conventions), averaged over the valid elements."""
    return KINDS.of(spec).loss(spec, raw, target)


def make_metric(spec: TaskSpec, options: MetricOptions | None = None) -> Metric:
    """A fresh split-level metric for ``spec``; ``.compute()`` returns a dict keyed by ``metric_infos``."""
    return KINDS.of(spec).make_metric(spec, options or MetricOptions())


def metric_infos(spec: TaskSpec) -> list[MetricInfo]:
    """Keys, directions, units and decimals of the metrics :func:`make_metric` returns for ``spec``."""
    return list(KINDS.of(spec).metrics)


def metric_directions(specs: Sequence[TaskSpec]) -> dict[str, str]:
    """``{"<task>/<metric>": "higher" | "lower"}`` over all tasks."""
    return {key: m.direction for key, m in KINDS.metric_infos(specs).items()}


def metric_table(specs: Sequence[TaskSpec]) -> dict[str, dict]:
    """Direction and unit of every metric of ``specs``, keyed ``<task>/<metric>`` (a record's ``metrics``)."""
    return KINDS.metric_table(specs)


def validate_batch(specs: Sequence[TaskSpec], batch: Mapping) -> None:
    """Check ``batch = {"image": B x C x H x W float, "targets": {task: tensor}}`` against ``specs``.

    The image always; per task, its kind's target check (shape, dtype and values, e.g. labels in [0, C) or
    ``ignore_index``). Raises ``ValueError`` naming the task, the field, the expected and the actual value.
    """
    if not isinstance(batch, Mapping) or "image" not in batch or "targets" not in batch:
        present = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"batch must be a mapping with keys 'image' and 'targets', got {present}")
    image = batch["image"]
    if not isinstance(image, Tensor) or not image.is_floating_point() or image.dim() != 4:
        actual = (f"shape {tuple(image.shape)} dtype {image.dtype}" if isinstance(image, Tensor)
                  else type(image).__name__)
        raise ValueError(f"batch 'image': expected a float tensor of shape (B, C, H, W), got {actual}")
    b, _, h, w = image.shape
    targets = batch["targets"]
    if not isinstance(targets, Mapping):
        raise ValueError(f"batch 'targets': expected a mapping task -> tensor, got {type(targets).__name__}")
    for spec in specs:
        if spec.name not in targets:
            raise ValueError(
                f"task {spec.name!r}: target missing from batch['targets'] (keys present: {sorted(targets)})"
            )
        t = targets[spec.name]
        if not isinstance(t, Tensor):
            raise ValueError(f"task {spec.name!r}: target is a {type(t).__name__}, expected a torch.Tensor")
        KINDS.of(spec).check_target(spec, t, b, h, w)
