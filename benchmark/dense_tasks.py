"""Losses and split-level metrics of the PASCAL-Context / NYUD-v2 task kinds: human_parts, saliency, edges.

Definitions follow docs/protocols.md §M.1 (Vandenhende variant), §M.4 and P5 (losses). Every metric keeps sum states
(``dist_reduce_fx="sum"``), so a DDP sync gives what one process would compute over the whole split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

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


class HumanPartsMetric(Metric):
    """Human-parts mIoU (percent), Vandenhende's definition (§M.1): per class TP, FP, FN accumulated over the
    split on valid pixels; IoU = TP / max(TP + FP + FN, 1e-8); the mean is over **all** classes (an absent class
    counts 0). Images without annotated persons are all ``ignore_index``, so they add nothing.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"HumanPartsMetric: num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        if labels.shape != target.shape:
            raise ValueError(f"HumanPartsMetric: prediction shape {tuple(pred.shape)} does not fit target shape "
                             f"{tuple(target.shape)}")
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        self.confmat += torch.bincount(target[valid] * c + labels[valid].long(), minlength=c * c).reshape(c, c)

    def compute(self) -> dict[str, Tensor]:
        h = self.confmat.double()
        tp = h.diagonal()
        iou = tp / (h.sum(dim=1) + h.sum(dim=0) - tp).clamp_min(1e-8)
        return {"miou": (100.0 * iou.mean()).float()}


class SaliencyMetric(Metric):
    """Saliency maxF and mIoU (percent) over the thresholds of §M.4 (ASTMT / Vandenhende offline evaluation).

    The prediction is ``sigmoid(logit)`` stored as an 8-bit PNG, i.e. floor(255 p) / 255, and binarised as
    ``> τ``. Per image and τ: precision TP/(TP+FP+1e-12), recall TP/(TP+FN+1e-12) and Jaccard TP/(TP+FP+FN)
    (1 when both masks are empty), over the pixels whose target is not ``ignore_index``. Precision, recall and
    Jaccard are averaged over the images; F(τ) = (1+β²)PR/(β²P+R+1e-12); maxF = max_τ F(τ) and
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
        prob = torch.floor(torch.sigmoid(pred.double()) * 255.0) / 255.0
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
