"""Per-pixel label kinds: ``segmentation`` (mIoU and pixel accuracy, docs/protocols.md §M.1, accumulated confusion
matrix) and ``human_parts`` (Vandenhende's mIoU over all classes, §M.1).

Targets are ``B x H x W`` int64 labels with ``ignore_index`` on invalid pixels; the head gives ``num_classes``
logits; the loss is cross-entropy over the valid pixels (MTAN / nash-mtl; Vandenhende for human parts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from benchmark.tasks.base import LabelMetric, MetricInfo, MetricOptions, TaskKind
from benchmark.tasks.registry import register
from datamodules.task_spec import TaskSpec


def _confmat_update(confmat: Tensor, pred: Tensor, target: Tensor, ignore_index: int, who: str) -> None:
    c = confmat.shape[0]
    labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
    if labels.shape != target.shape:
        raise ValueError(f"{who}: prediction shape {tuple(pred.shape)} does not fit target shape {tuple(target.shape)}")
    valid = (target >= 0) & (target < c) & (target != ignore_index)
    confmat += torch.bincount(target[valid] * c + labels[valid].long(), minlength=c * c).reshape(c, c)


class SegmentationMetric(LabelMetric):
    """mIoU and pixel accuracy (percent) from one confusion matrix accumulated over the split (§M.1).

    ``update(pred, target)`` takes logits ``B x C x H x W`` (argmax is taken) or labels ``B x H x W``.
    Only pixels with 0 <= gt < C (and gt != ignore_index) count. A class absent from both the ground truth
    and the predictions is excluded from the mean (nanmean).
    """

    def __init__(self, num_classes: int, ignore_index: int = -1, **kwargs) -> None:
        super().__init__(num_classes, ignore_index, **kwargs)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        _confmat_update(self.confmat, pred, target, self.ignore_index, "SegmentationMetric")

    def compute(self) -> dict[str, Tensor]:
        h = self.confmat.double()
        tp = h.diagonal()
        iou = tp / (h.sum(dim=1) + h.sum(dim=0) - tp)
        return {
            "miou": (100.0 * torch.nanmean(iou)).float(),
            "pix_acc": (100.0 * tp.sum() / h.sum()).float(),
        }


class HumanPartsMetric(LabelMetric):
    """Human-parts mIoU (percent), Vandenhende's definition (§M.1): per class TP, FP, FN accumulated over the
    split on valid pixels; IoU = TP / max(TP + FP + FN, 1e-8); the mean is over **all** classes (an absent class
    counts 0). Images without annotated persons are all ``ignore_index``, so they add nothing.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(num_classes, ignore_index, **kwargs)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        _confmat_update(self.confmat, pred, target, self.ignore_index, "HumanPartsMetric")

    def compute(self) -> dict[str, Tensor]:
        h = self.confmat.double()
        tp = h.diagonal()
        iou = tp / (h.sum(dim=1) + h.sum(dim=0) - tp).clamp_min(1e-8)
        return {"miou": (100.0 * iou.mean()).float()}


class LabelKind(TaskKind):
    """Shared by the per-pixel label kinds: logits head, cross-entropy, int64 label maps."""

    needs_classes = True

    def head_channels(self, spec: TaskSpec) -> int:
        return int(spec.num_classes)

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy ignoring ``ignore_index``, averaged over the valid pixels (an exact 0, still connected to
        ``raw``, when there is none)."""
        if not (raw.dim() == 4 and raw.shape[:1] + raw.shape[2:] == target.shape):
            raise ValueError(f"task {spec.name!r}: prediction shape {tuple(raw.shape)} does not match the expected "
                             f"(B, C, H, W) with (B, H, W) = {tuple(target.shape)}")
        total = F.cross_entropy(raw, target, ignore_index=spec.ignore_index, reduction="sum")
        return total / (target != spec.ignore_index).sum().clamp_min(1)

    def target_shape(self, spec: TaskSpec, b: int, h: int, w: int) -> tuple[tuple[int, ...], str]:
        return (b, h, w), "(B, H, W)"

    def check_values(self, spec: TaskSpec, t: Tensor) -> None:
        """int64 labels in [0, C) or ``ignore_index`` (one min/max in the common case)."""
        if t.dtype != torch.int64:
            raise ValueError(f"task {spec.name!r}: target dtype {t.dtype} does not match the expected torch.int64")
        c, ignore = int(spec.num_classes), spec.ignore_index
        if t.numel() == 0:
            return
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(t)).tolist())
        if 0 <= lo and hi < c:
            return
        labels = t[t != ignore]
        if labels.numel() == 0:
            return
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(labels)).tolist())
        bad = lo if lo < 0 else hi if hi >= c else None
        if bad is not None:
            raise ValueError(
                f"task {spec.name!r}: target label {bad} is outside the expected [0, {c}) ∪ {{ignore_index={ignore}}}"
            )


@register("segmentation")
class Segmentation(LabelKind):
    metrics = (MetricInfo("miou", "higher", "percent"), MetricInfo("pix_acc", "higher", "percent"))

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return SegmentationMetric(int(spec.num_classes), spec.ignore_index)


@register("human_parts")
class HumanParts(LabelKind):
    metrics = (MetricInfo("miou", "higher", "percent"),)

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return HumanPartsMetric(int(spec.num_classes), spec.ignore_index)
