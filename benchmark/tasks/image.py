"""Image-level kinds (one target per image): multi-class ``classification`` and one ``binary`` attribute.

classification: cross-entropy on ``B x C`` logits against ``B`` int64 labels (``ignore_index`` skipped), the
metric is accuracy in percent (MultiMNIST, Sener & Koltun, NeurIPS 2018, §5.1). binary: BCE-with-logits on
``B x 1`` logits against ``B`` 0/1 targets; the metrics are the error rate and F1 in percent, with F1 from the
TP/FP/FN counts of the whole split at threshold 0.5 (docs/protocols.md P6, the FAMO CelebA protocol). Both metrics
accumulate integer sum states, so a DDP sync gives the single-process number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from benchmark.tasks.base import LabelMetric, MetricInfo, MetricOptions, TaskKind
from benchmark.tasks.registry import register
from datamodules.task_spec import TaskSpec


class AccuracyMetric(LabelMetric):
    """Top-1 accuracy (percent) over the split; ``update`` takes logits ``B x C`` or labels ``B``.

    Only images with 0 <= label < C and label != ignore_index count; with none, ``acc`` is NaN.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1, **kwargs) -> None:
        super().__init__(num_classes, ignore_index, **kwargs)
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        labels = pred.argmax(dim=1) if pred.dim() == 2 else pred
        if labels.shape != target.shape or target.dim() != 1:
            raise ValueError(f"AccuracyMetric: prediction shape {tuple(pred.shape)} does not fit target shape "
                             f"{tuple(target.shape)}; expected (B, C) or (B,) against (B,)")
        valid = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        self.correct += (labels[valid] == target[valid]).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"acc": (100.0 * self.correct.double() / self.count.double()).float()}


class BinaryMetric(Metric):
    """Error rate and F1 (percent) of one binary attribute over the split, from TP/FP/FN/TN counts.

    ``update(pred, target)`` takes logits ``B x 1`` or ``B``; a logit > 0 (sigmoid > 0.5) predicts 1.
    F1 = 2 TP / (2 TP + FP + FN), and 0 when that denominator is 0 (no positive target nor prediction), the
    ``zero_division=0`` convention of scikit-learn and torchmetrics. With no image, both are NaN.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        logits = pred[:, 0] if pred.dim() == 2 and pred.shape[1] == 1 else pred
        if logits.shape != target.shape or target.dim() != 1:
            raise ValueError(f"BinaryMetric: prediction shape {tuple(pred.shape)} does not fit target shape "
                             f"{tuple(target.shape)}; expected (B, 1) or (B,) against (B,)")
        p, g = logits > 0, target > 0.5
        self.tp += (p & g).sum()
        self.fp += (p & ~g).sum()
        self.fn += (~p & g).sum()
        self.tn += (~p & ~g).sum()

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn, tn = (s.double() for s in (self.tp, self.fp, self.fn, self.tn))
        n = tp + fp + fn + tn
        f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
        if n == 0:
            f1 = torch.full_like(tp, float("nan"))
        return {"error": (100.0 * (fp + fn) / n).float(), "f1": (100.0 * f1).float()}


class ImageKind(TaskKind):
    """Shared by the image-level kinds: a ``(B, C)`` head output against a ``(B,)`` target."""

    def check_raw(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> None:
        c = self.head_channels(spec)
        if target.dim() != 1 or tuple(raw.shape) != (target.shape[0], c):
            raise ValueError(
                f"task {spec.name!r}: prediction shape {tuple(raw.shape)} does not match the expected (B, {c}) "
                f"with target shape (B,) = {tuple(target.shape)}"
            )

    def check_target(self, spec: TaskSpec, t: Tensor, b: int, h: int, w: int) -> None:
        if tuple(t.shape) != (b,):
            raise ValueError(f"task {spec.name!r}: target shape {tuple(t.shape)} does not match the expected (B,) = "
                             f"{(b,)}")
        self.check_values(spec, t)


@register("classification")
class Classification(ImageKind):
    metrics = (MetricInfo("acc", "higher", "percent"),)
    needs_classes = True

    def head_channels(self, spec: TaskSpec) -> int:
        return int(spec.num_classes)

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the labelled images (exact 0, still connected to ``raw``, if none is)."""
        self.check_raw(spec, raw, target)
        total = F.cross_entropy(raw, target, ignore_index=spec.ignore_index, reduction="sum")
        return total / (target != spec.ignore_index).sum().clamp_min(1)

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return AccuracyMetric(int(spec.num_classes), spec.ignore_index)

    def check_values(self, spec: TaskSpec, t: Tensor) -> None:
        """int64 labels in [0, C) or ``ignore_index``."""
        if t.dtype != torch.int64:
            raise ValueError(f"task {spec.name!r}: target dtype {t.dtype} does not match the expected torch.int64")
        bad = t[((t < 0) | (t >= spec.num_classes)) & (t != spec.ignore_index)]
        if bad.numel():
            raise ValueError(f"task {spec.name!r}: target label {int(bad[0])} is outside the expected "
                             f"[0, {spec.num_classes}) ∪ {{ignore_index={spec.ignore_index}}}")


@register("binary")
class Binary(ImageKind):
    metrics = (MetricInfo("error", "lower", "percent"), MetricInfo("f1", "higher", "percent"))

    def head_channels(self, spec: TaskSpec) -> int:
        return 1

    def loss(self, spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
        """Mean BCE-with-logits."""
        self.check_raw(spec, raw, target)
        return F.binary_cross_entropy_with_logits(raw[:, 0], target.to(raw.dtype))

    def make_metric(self, spec: TaskSpec, options: MetricOptions) -> Metric:
        return BinaryMetric()

    def check_values(self, spec: TaskSpec, t: Tensor) -> None:
        """Float or int values 0/1."""
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"task {spec.name!r}: target dtype {t.dtype} does not match the expected float or int 0/1")
        bad = t[(t != 0) & (t != 1)]
        if bad.numel():
            raise ValueError(f"task {spec.name!r}: binary target value {float(bad[0])} is not 0 or 1")
