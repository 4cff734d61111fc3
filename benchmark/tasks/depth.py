"""``depth``: a 1-channel map, 0 = invalid; masked L1 loss; Abs Err, Rel Err and RMSE (docs/protocols.md §M.2)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from benchmark.tasks.base import MetricInfo, MetricOptions, TaskKind, check_raw_shape
from benchmark.tasks.registry import register
from datamodules.task_spec import TaskSpec

_ERRORS = ("abs_err", "rel_err", "rmse")


class DepthMetric(Metric):
    """Abs Err, Rel Err and RMSE over the valid pixels (target != 0) of the split (§M.2).

    ``aggregation="global"``: per-pixel means over all valid pixels of the split (LibMTL's aggregation; RMSE is
    Vandenhende's pixel-wise split RMSE). ``"per_batch"``: per ``update`` (one batch of one process) the mean
    absolute and relative error over its valid pixels and the RMSE of its valid pixels, then the plain mean over
    the batches (MTAN / nash-mtl ``avg_cost += cost / n_batches``; a short last batch weighs as much as any
    other). A batch without a valid pixel is left out of the per-batch mean. ``clamp``: predictions <= 0
    become this value first (Vandenhende's ``pred[pred <= 0] = 1e-9``).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, aggregation: str = "global", clamp: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        MetricOptions(aggregation, clamp)
        self.aggregation, self.clamp = aggregation, clamp
        if aggregation == "global":
            for name in ("abs_sum", "rel_sum", "sq_sum"):
                self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("batch_sums", torch.zeros(len(_ERRORS), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("batches", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"DepthMetric: prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
            )
        valid = target != 0
        p = pred[valid].double()
        if self.clamp is not None:
            p = torch.where(p <= 0, self.clamp, p)
        g = target[valid].double()
        err = (p - g).abs()
        if self.aggregation == "global":
            self.abs_sum += err.sum()
            self.rel_sum += (err / g).sum()
            self.sq_sum += err.square().sum()
            self.count += valid.sum()
        elif err.numel():
            self.batch_sums += torch.stack([err.mean(), (err / g).mean(), err.square().mean().sqrt()])
            self.batches += 1

    def compute(self) -> dict[str, Tensor]:
        if self.aggregation == "global":
            n = self.count.double()
            return {
                "abs_err": (self.abs_sum / n).float(),
                "rel_err": (self.rel_sum / n).float(),
                "rmse": (self.sq_sum / n).sqrt().float(),
            }
        return dict(zip(_ERRORS, (self.batch_sums / self.batches.double()).float().unbind(0), strict=True))


@register("depth")
class Depth(TaskKind):
    metrics = (
        MetricInfo("abs_err", "lower", "metres"),
        MetricInfo("rel_err", "lower", "ratio"),
        MetricInfo("rmse", "lower", "metres"),
    )

    def head_channels(self, spec: TaskSpec) -> int:
        return 1

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """L1 over the pixels with target != 0 (MTAN / nash-mtl); an exact 0 connected to ``raw`` with none."""
        check_raw_shape(spec, raw, target)
        valid = target != 0
        return torch.where(valid, (raw - target).abs(), 0.0).sum() / valid.sum().clamp_min(1)

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return DepthMetric(options.aggregation, options.depth_clamp)
