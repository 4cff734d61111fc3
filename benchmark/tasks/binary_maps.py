"""Binary per-pixel kinds of PASCAL-Context / NYUD-v2: ``saliency`` (maxF and mIoU, docs/protocols.md §M.4) and
``edges`` (balanced BCE standing in for odsF, §M.5); both train with a balanced BCE (P5 losses).

Targets are ``B x 1 x H x W`` floats in {0, 1} with ``ignore_index`` invalid; the head gives one logit and the
prediction is its sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from benchmark.tasks.base import MetricInfo, MetricOptions, TaskKind, check_raw_shape
from benchmark.tasks.registry import register
from datamodules.task_spec import TaskSpec

SALIENCY_THRESHOLDS = tuple(float(t) for t in torch.linspace(0.2, 0.9, 15, dtype=torch.float64))
"""τ of §M.4: ``linspace(0.2, 0.9, 15)``."""
SALIENCY_BETA_SQUARED = 1.0
"""§M.4 combines the mean precision and recall as F = 2PR/(P+R), i.e. β² = 1 (not the 0.3 of other code)."""
_EPS = 1e-12


def balanced_bce(raw: Tensor, target: Tensor, pos_weight: float | None, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Sum over valid pixels of the balanced BCE-with-logits, and the number of valid pixels.

    Per pixel: w · BCE on positives, (1 − w) · BCE on negatives (Vandenhende et al., TPAMI 2021, the
    ``BalancedCrossEntropyLoss`` of their code; HED, Xie & Tu, ICCV 2015, Eq. 2). ``pos_weight=None`` sets w to
    the share of negative pixels among the valid pixels of the batch. Pixels equal to ``ignore_index`` are
    left out. The reference divides by all pixels; with no ignored pixel this is the same mean.
    """
    valid = target != ignore_index
    positive = (target == 1) & valid
    count = valid.sum()
    if pos_weight is None:
        w = (count - positive.sum()).to(raw.dtype) / count.clamp_min(1).to(raw.dtype)
    else:
        w = torch.as_tensor(pos_weight, dtype=raw.dtype, device=raw.device)
    bce = F.binary_cross_entropy_with_logits(raw, positive.to(raw.dtype), reduction="none")
    weight = torch.where(positive, w, 1.0 - w)
    return torch.where(valid, weight * bce, 0.0).sum(), count


class SaliencyMetric(Metric):
    """Saliency maxF and mIoU (percent) over the thresholds of §M.4 (ASTMT / Vandenhende offline evaluation).

    The prediction is ``sigmoid(logit)`` stored as an 8-bit PNG and read back, in float32 as the reference code
    computes it: floor(255 / (1 + exp(-logit))) / 255, binarised as ``> τ`` (so a level exactly at τ = 0.2, 0.4,
    0.6, 0.8 counts as above: float32(k / 255) > τ). Per image and τ: precision TP/(TP+FP+1e-12), recall
    TP/(TP+FN+1e-12) and Jaccard TP/(TP+FP+FN) (1 when both masks are empty), over the pixels whose target is
    not ``ignore_index``. Precision, recall and Jaccard are averaged over the images;
    F(τ) = (1+β²)PR/(β²P+R+1e-12); maxF = max_τ F(τ) and
    mIoU = max_τ mean Jaccard.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ignore_index: int = 255, beta_squared: float = SALIENCY_BETA_SQUARED, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index, self.beta_squared = int(ignore_index), float(beta_squared)
        n = len(SALIENCY_THRESHOLDS)
        for name in ("precision_sum", "recall_sum", "jaccard_sum"):
            self.add_state(name, torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"SaliencyMetric: prediction shape {tuple(pred.shape)} and target shape "
                             f"{tuple(target.shape)} must both be (B, 1, H, W)")
        level = torch.floor(255.0 / (1.0 + torch.exp(-pred.float())))
        prob = (level / 255.0).double()
        valid = (target != self.ignore_index).flatten(1)
        gt = ((target == 1).flatten(1) & valid).unsqueeze(1)
        tau = torch.tensor(SALIENCY_THRESHOLDS, dtype=prob.dtype, device=prob.device).view(1, -1, 1)
        mask = (prob.flatten(1).unsqueeze(1) > tau) & valid.unsqueeze(1)
        tp = (mask & gt).sum(dim=2).double()
        fp = (mask & ~gt).sum(dim=2).double()
        fn = (~mask & gt & valid.unsqueeze(1)).sum(dim=2).double()
        union = tp + fp + fn
        self.precision_sum += (tp / (tp + fp + _EPS)).sum(dim=0)
        self.recall_sum += (tp / (tp + fn + _EPS)).sum(dim=0)
        self.jaccard_sum += torch.where(union > 0, tp / union.clamp_min(1), 1.0).sum(dim=0)
        self.images += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.images.double()
        p, r = self.precision_sum / n, self.recall_sum / n
        b2 = self.beta_squared
        f = (1.0 + b2) * p * r / (b2 * p + r + _EPS)
        return {"maxf": (100.0 * f.max()).float(), "miou": (100.0 * (self.jaccard_sum / n).max()).float()}


class EdgeLossMetric(Metric):
    """The edge task's balanced BCE (as in training, see :func:`balanced_bce`) averaged over every valid pixel of
    the split; lower is better. It stands in for odsF (§M.5), which needs the SEISM MATLAB toolbox and is not
    computed here; Vandenhende's code likewise tracks only this loss during training.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, pos_weight: float | None, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pos_weight, self.ignore_index = pos_weight, int(ignore_index)
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"EdgeLossMetric: prediction shape {tuple(pred.shape)} does not match target "
                             f"{tuple(target.shape)}")
        total, count = balanced_bce(pred.double(), target, self.pos_weight, self.ignore_index)
        self.loss_sum += total
        self.count += count

    def compute(self) -> dict[str, Tensor]:
        return {"loss": (self.loss_sum / self.count.double()).float()}


class BinaryMapKind(TaskKind):
    """Shared by saliency and edges: one logit, sigmoid prediction, balanced BCE, targets 0/1/ignore."""

    weighted = True

    def head_channels(self, spec: TaskSpec) -> int:
        return 1

    def predict(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw)

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """:func:`balanced_bce` with ``spec.pos_weight``, averaged over the valid pixels."""
        check_raw_shape(spec, raw, target)
        total, count = balanced_bce(raw, target, spec.pos_weight, spec.ignore_index)
        return total / count.clamp_min(1)

    def check_values(self, spec: TaskSpec, t: Tensor) -> None:
        super().check_values(spec, t)
        bad = t[(t != 0) & (t != 1) & (t != spec.ignore_index)]
        if bad.numel():
            raise ValueError(f"task {spec.name!r}: target value {float(bad[0])} is not 0, 1 or "
                             f"ignore_index={spec.ignore_index}")


@register("saliency")
class Saliency(BinaryMapKind):
    metrics = (MetricInfo("maxf", "higher", "percent"), MetricInfo("miou", "higher", "percent"))

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return SaliencyMetric(spec.ignore_index)


@register("edges")
class Edges(BinaryMapKind):
    """Reports its balanced BCE, not odsF: odsF needs the SEISM MATLAB toolbox (§M.5)."""

    metrics = (MetricInfo("loss", "lower", "bce"),)

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return EdgeLossMetric(spec.pos_weight, spec.ignore_index)
