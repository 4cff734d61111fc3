"""``normals``: 3-vector unit normals, the zero vector = invalid; 1 - cos loss (``loss_variant="l1"``: the L1 loss of
Vandenhende's ``NormalsLoss``); angular errors (docs/protocols.md §M.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from benchmark.tasks.base import MetricInfo, MetricOptions, TaskKind, check_raw_shape, nan_dict
from benchmark.tasks.registry import register
from datamodules.task_spec import TaskSpec

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
NORMAL_HIST_BINS = 36_000
_NORMAL_BIN_WIDTH = 180.0 / NORMAL_HIST_BINS
_NORM_EPS = 1e-12
_KEYS = ("normal_mean", "normal_median", "within_11_25", "within_22_5", "within_30")


def normals_valid(target: Tensor) -> Tensor:
    """``B x H x W`` mask of pixels whose target normal is not the zero vector."""
    return (target != 0).any(dim=1)


def _median(x: Tensor) -> Tensor:
    """Exact median (the mean of the two middle values when the count is even), as ``np.median``."""
    n = x.numel()
    lo = x.kthvalue((n + 1) // 2).values
    return lo if n % 2 else 0.5 * (lo + x.kthvalue(n // 2 + 1).values)


class NormalsMetric(Metric):
    """Angular error of surface normals over the valid pixels of the split (§M.3).

    ``update(pred, target)`` L2-normalises ``pred`` (raw head output or already normalised). The angle is
    degrees(arccos(clamp(<p, g>, -1, 1))), computed in float64.

    ``aggregation="global"`` (LibMTL): over all valid pixels of the split. The mean and the within-fractions are
    exact; the median is read off a histogram of 0.005-degree bins (a sum state) by interpolating inside the bin,
    which places it within one bin width of the exact median. ``"per_batch"`` (MTAN / nash-mtl): per ``update``
    (one batch of one process) the mean, the exact median and the within-fractions of its valid pixels, then
    the plain mean of each over the batches; a batch without a valid pixel is left out.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, aggregation: str = "global", **kwargs) -> None:
        super().__init__(**kwargs)
        MetricOptions(aggregation)
        self.aggregation = aggregation
        if aggregation == "global":
            self.add_state("hist", torch.zeros(NORMAL_HIST_BINS, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("angle_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("within", torch.zeros(len(NORMAL_THRESHOLDS), dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("batch_sums", torch.zeros(len(_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("batches", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalsMetric: prediction shape {tuple(pred.shape)} and target shape {tuple(target.shape)} "
                "must both be (B, 3, H, W)"
            )
        valid = normals_valid(target)
        p = F.normalize(pred.double(), p=2.0, dim=1, eps=_NORM_EPS)
        cos = (p * target.double()).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.arccos(cos))
        thresholds = torch.tensor(NORMAL_THRESHOLDS, dtype=angle.dtype, device=angle.device)
        below = angle.unsqueeze(1) < thresholds
        if self.aggregation == "global":
            idx = (angle / _NORMAL_BIN_WIDTH).long().clamp_(0, NORMAL_HIST_BINS - 1)
            self.hist += torch.bincount(idx, minlength=NORMAL_HIST_BINS)
            self.angle_sum += angle.sum()
            self.within += below.sum(dim=0)
        elif angle.numel():
            fractions = 100.0 * below.double().mean(dim=0)
            self.batch_sums += torch.cat([torch.stack([angle.mean(), _median(angle)]), fractions])
            self.batches += 1

    def _order_statistic(self, cum: Tensor, rank: int) -> float:
        """Value of the ``rank``-th (0-based) smallest angle, spreading each bin's counts evenly."""
        k = int(torch.searchsorted(cum, torch.tensor([rank], device=cum.device), right=True).item())
        in_bin = int(self.hist[k].item())
        before = int(cum[k].item()) - in_bin
        return (k + (rank - before + 0.5) / in_bin) * _NORMAL_BIN_WIDTH

    def compute(self) -> dict[str, Tensor]:
        if self.aggregation == "per_batch":
            return dict(zip(_KEYS, (self.batch_sums / self.batches.double()).float().unbind(0), strict=True))
        cum = self.hist.cumsum(0)
        n = int(cum[-1].item())
        if n == 0:
            return nan_dict(_KEYS)
        median = 0.5 * (self._order_statistic(cum, (n - 1) // 2) + self._order_statistic(cum, n // 2))
        fractions = 100.0 * self.within.double() / n
        out = {
            "normal_mean": self.angle_sum / n,
            "normal_median": torch.tensor(median, dtype=torch.float64),
            **dict(zip(_KEYS[2:], fractions.unbind(0), strict=True)),
        }
        return {k: out[k].float() for k in _KEYS}


@register("normals")
class Normals(TaskKind):
    metrics = (
        MetricInfo("normal_mean", "lower", "degrees"),
        MetricInfo("normal_median", "lower", "degrees"),
        MetricInfo("within_11_25", "higher", "percent"),
        MetricInfo("within_22_5", "higher", "percent"),
        MetricInfo("within_30", "higher", "percent"),
    )

    def head_channels(self, spec: TaskSpec) -> int:
        return 3

    def predict(self, raw: Tensor) -> Tensor:
        """L2-normalised over the channels (§M.3)."""
        return F.normalize(raw, p=2.0, dim=1, eps=_NORM_EPS)

    loss_variants = ("l1",)

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """1 - cos(predict(raw), target) over the pixels whose target is not the zero vector (MTAN / nash-mtl);
        ``loss_variant="l1"``: |predict(raw) - target| summed over the components of the valid pixels, divided by
        their number of components (Vandenhende et al.'s ``NormalsLoss(normalize=True, norm=1)``, P3 / P5)."""
        check_raw_shape(spec, raw, target)
        valid = normals_valid(target)
        if spec.loss_variant == "l1":
            error = (self.predict(raw) - target).abs().sum(dim=1)
            return torch.where(valid, error, 0.0).sum() / (3 * valid.sum()).clamp_min(1)
        cos = (self.predict(raw) * target).sum(dim=1)
        return torch.where(valid, 1.0 - cos, 0.0).sum() / valid.sum().clamp_min(1)

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return NormalsMetric(options.aggregation)
