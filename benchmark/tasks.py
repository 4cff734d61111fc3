"""Per task kind: head size, loss, prediction post-processing and split-level metrics.

Target conventions are those of :class:`datamodules.task_spec.TaskSpec`; the metric definitions are the
global (whole-split, pixel-level) variants of docs/protocols.md §M.1-M.3. Every metric accumulates sum states
(``dist_reduce_fx="sum"``), so a DDP sync gives the number a single process would compute over the split.
The PASCAL-Context kinds (human_parts, saliency, edges) live in :mod:`benchmark.dense_tasks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from benchmark.dense_tasks import EdgeLossMetric, HumanPartsMetric, SaliencyMetric, balanced_bce
from benchmark.image_tasks import check_image_target, image_head_channels, image_task_loss, make_image_metric
from datamodules.task_spec import BINARY_KINDS, IMAGE_KINDS, LABEL_KINDS, TaskSpec

__all__ = [
    "MetricInfo",
    "SegmentationMetric",
    "DepthMetric",
    "NormalsMetric",
    "head_channels",
    "predict",
    "task_loss",
    "metric_infos",
    "metric_directions",
    "make_metric",
    "validate_batch",
]

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
NORMAL_HIST_BINS = 36_000
_NORMAL_BIN_WIDTH = 180.0 / NORMAL_HIST_BINS
_NORM_EPS = 1e-12


UNIT_DECIMALS = {"percent": 2, "degrees": 2, "metres": 4, "ratio": 4, "inverse_depth": 4, "fraction": 4}
DEFAULT_DECIMALS = 4


@dataclass(frozen=True)
class MetricInfo:
    """One reported metric: its key, ``direction`` ("higher" | "lower" is better), ``unit`` and the ``decimals``
    tables print it with (default: by unit, :data:`UNIT_DECIMALS`)."""

    key: str
    direction: str
    unit: str | None
    decimals: int | None = None

    def __post_init__(self) -> None:
        if self.decimals is None:
            object.__setattr__(self, "decimals", UNIT_DECIMALS.get(self.unit or "", DEFAULT_DECIMALS))


_METRIC_INFOS: dict[str, tuple[MetricInfo, ...]] = {
    "segmentation": (
        MetricInfo("miou", "higher", "percent"),
        MetricInfo("pix_acc", "higher", "percent"),
    ),
    "depth": (
        MetricInfo("abs_err", "lower", "metres"),
        MetricInfo("rel_err", "lower", "ratio"),
        MetricInfo("rmse", "lower", "metres"),
    ),
    "normals": (
        MetricInfo("normal_mean", "lower", "degrees"),
        MetricInfo("normal_median", "lower", "degrees"),
        MetricInfo("within_11_25", "higher", "percent"),
        MetricInfo("within_22_5", "higher", "percent"),
        MetricInfo("within_30", "higher", "percent"),
    ),
    "human_parts": (MetricInfo("miou", "higher", "percent"),),
    "saliency": (
        MetricInfo("maxf", "higher", "percent"),
        MetricInfo("miou", "higher", "percent"),
    ),
    "edges": (MetricInfo("loss", "lower", "bce"),),
    "classification": (MetricInfo("acc", "higher", "percent"),),
    "binary": (MetricInfo("error", "lower", "percent"), MetricInfo("f1", "higher", "percent")),
}
"""Edges report their balanced BCE, not odsF: odsF needs the SEISM MATLAB toolbox (docs/protocols.md §M.5)."""


def head_channels(spec: TaskSpec) -> int:
    """Output channels of the task head: ``num_classes`` logits, 1 depth value, a 3-vector normal or 1 logit."""
    if spec.kind in IMAGE_KINDS:
        return image_head_channels(spec)
    if spec.kind in LABEL_KINDS:
        return int(spec.num_classes)
    return {"depth": 1, "normals": 3, "saliency": 1, "edges": 1}[spec.kind]


def predict(spec: TaskSpec, raw: Tensor) -> Tensor:
    """Head output -> prediction: normals are L2-normalised over the channels (§M.3), saliency and edge logits
    become probabilities, others unchanged."""
    if spec.kind == "normals":
        return F.normalize(raw, p=2.0, dim=1, eps=_NORM_EPS)
    if spec.kind in BINARY_KINDS:
        return torch.sigmoid(raw)
    return raw


def _normals_valid(target: Tensor) -> Tensor:
    """``B x H x W`` mask of pixels whose target normal is not the zero vector."""
    return (target != 0).any(dim=1)


def _check_raw_shape(spec: TaskSpec, raw: Tensor, target: Tensor) -> None:
    """Guard against silent broadcasting between the head output and the target."""
    if spec.kind in LABEL_KINDS:
        ok = raw.dim() == 4 and raw.shape[:1] + raw.shape[2:] == target.shape
        want = f"(B, C, H, W) with (B, H, W) = {tuple(target.shape)}"
    else:
        ok = raw.shape == target.shape
        want = str(tuple(target.shape))
    if not ok:
        raise ValueError(
            f"task {spec.name!r}: prediction shape {tuple(raw.shape)} does not match the expected {want}"
        )


def task_loss(spec: TaskSpec, raw: Tensor, target: Tensor) -> Tensor:
    """Scalar training loss (MTAN / nash-mtl conventions), averaged over the valid pixels.

    segmentation: cross-entropy ignoring ``ignore_index``; depth: L1 where target != 0; normals:
    1 - cos(predict(raw), target) where the target is not the zero vector; human_parts as segmentation;
    saliency and edges: balanced BCE with ``spec.pos_weight`` (:func:`benchmark.dense_tasks.balanced_bce`).
    With no valid pixel the loss is an exact 0 that is still connected to ``raw``. Image-level kinds:
    :func:`benchmark.image_tasks.image_task_loss`.
    """
    if spec.kind in IMAGE_KINDS:
        return image_task_loss(spec, raw, target)
    _check_raw_shape(spec, raw, target)
    if spec.kind in BINARY_KINDS:
        total, count = balanced_bce(raw, target, spec.pos_weight, spec.ignore_index)
    elif spec.kind in LABEL_KINDS:
        total = F.cross_entropy(raw, target, ignore_index=spec.ignore_index, reduction="sum")
        count = (target != spec.ignore_index).sum()
    elif spec.kind == "depth":
        valid = target != 0
        total = torch.where(valid, (raw - target).abs(), 0.0).sum()
        count = valid.sum()
    else:
        valid = _normals_valid(target)
        cos = (predict(spec, raw) * target).sum(dim=1)
        total = torch.where(valid, 1.0 - cos, 0.0).sum()
        count = valid.sum()
    return total / count.clamp_min(1)


def metric_infos(spec: TaskSpec) -> list[MetricInfo]:
    """Keys, directions and units of the metrics :func:`make_metric` returns for ``spec``."""
    return list(_METRIC_INFOS[spec.kind])


def metric_directions(specs: Sequence[TaskSpec]) -> dict[str, str]:
    """``{"<task>/<metric>": "higher" | "lower"}`` over all tasks."""
    return {f"{s.name}/{m.key}": m.direction for s in specs for m in metric_infos(s)}


def _nan_dict(keys: Sequence[str]) -> dict[str, Tensor]:
    return {k: torch.tensor(float("nan")) for k in keys}


class SegmentationMetric(Metric):
    """mIoU and pixel accuracy (percent) from one confusion matrix accumulated over the split (§M.1).

    ``update(pred, target)`` takes logits ``B x C x H x W`` (argmax is taken) or labels ``B x H x W``.
    Only pixels with 0 <= gt < C (and gt != ignore_index) count. A class absent from both the ground truth
    and the predictions is excluded from the mean (nanmean).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"SegmentationMetric: num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        if labels.shape != target.shape:
            raise ValueError(
                f"SegmentationMetric: prediction shape {tuple(pred.shape)} does not fit target shape "
                f"{tuple(target.shape)}"
            )
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        idx = target[valid] * c + labels[valid].long()
        self.confmat += torch.bincount(idx, minlength=c * c).reshape(c, c)

    def compute(self) -> dict[str, Tensor]:
        h = self.confmat.double()
        tp = h.diagonal()
        iou = tp / (h.sum(dim=1) + h.sum(dim=0) - tp)
        return {
            "miou": (100.0 * torch.nanmean(iou)).float(),
            "pix_acc": (100.0 * tp.sum() / h.sum()).float(),
        }


class DepthMetric(Metric):
    """Abs Err, Rel Err and RMSE as global per-pixel means over all valid pixels of the split (§M.2).

    Valid pixels have target != 0. This is LibMTL's aggregation, not the nash-mtl mean of batch means.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("abs_sum", "rel_sum", "sq_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"DepthMetric: prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}"
            )
        valid = target != 0
        g = target[valid].double()
        err = (pred[valid].double() - g).abs()
        self.abs_sum += err.sum()
        self.rel_sum += (err / g).sum()
        self.sq_sum += err.square().sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.double()
        return {
            "abs_err": (self.abs_sum / n).float(),
            "rel_err": (self.rel_sum / n).float(),
            "rmse": (self.sq_sum / n).sqrt().float(),
        }


class NormalsMetric(Metric):
    """Angular error of surface normals over all valid pixels of the split (§M.3, LibMTL's global variant).

    ``update(pred, target)`` L2-normalises ``pred`` (raw head output or already normalised). The angle is
    degrees(arccos(clamp(<p, g>, -1, 1))), computed in float64. The mean and the within-fractions are exact;
    the median is read off a histogram of 0.005-degree bins (a sum state) by interpolating inside the bin,
    which places it within one bin width of the exact median of all valid pixels.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hist", torch.zeros(NORMAL_HIST_BINS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("angle_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("within", torch.zeros(len(NORMAL_THRESHOLDS), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalsMetric: prediction shape {tuple(pred.shape)} and target shape {tuple(target.shape)} "
                "must both be (B, 3, H, W)"
            )
        valid = _normals_valid(target)
        p = F.normalize(pred.double(), p=2.0, dim=1, eps=_NORM_EPS)
        cos = (p * target.double()).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.arccos(cos))
        idx = (angle / _NORMAL_BIN_WIDTH).long().clamp_(0, NORMAL_HIST_BINS - 1)
        self.hist += torch.bincount(idx, minlength=NORMAL_HIST_BINS)
        self.angle_sum += angle.sum()
        thresholds = torch.tensor(NORMAL_THRESHOLDS, dtype=angle.dtype, device=angle.device)
        self.within += (angle.unsqueeze(1) < thresholds).sum(dim=0)

    def _order_statistic(self, cum: Tensor, rank: int) -> float:
        """Value of the ``rank``-th (0-based) smallest angle, spreading each bin's counts evenly."""
        k = int(torch.searchsorted(cum, torch.tensor([rank], device=cum.device), right=True).item())
        in_bin = int(self.hist[k].item())
        before = int(cum[k].item()) - in_bin
        return (k + (rank - before + 0.5) / in_bin) * _NORMAL_BIN_WIDTH

    def compute(self) -> dict[str, Tensor]:
        keys = [m.key for m in _METRIC_INFOS["normals"]]
        cum = self.hist.cumsum(0)
        n = int(cum[-1].item())
        if n == 0:
            return _nan_dict(keys)
        median = 0.5 * (self._order_statistic(cum, (n - 1) // 2) + self._order_statistic(cum, n // 2))
        fractions = 100.0 * self.within.double() / n
        out = {
            "normal_mean": self.angle_sum / n,
            "normal_median": torch.tensor(median, dtype=torch.float64),
            **dict(zip(keys[2:], fractions.unbind(0), strict=True)),
        }
        return {k: out[k].float() for k in keys}


def make_metric(spec: TaskSpec) -> Metric:
    """A fresh split-level metric for ``spec``; ``.compute()`` returns a dict keyed by ``metric_infos``."""
    if spec.kind in IMAGE_KINDS:
        return make_image_metric(spec)
    if spec.kind == "segmentation":
        return SegmentationMetric(int(spec.num_classes), spec.ignore_index)
    if spec.kind == "depth":
        return DepthMetric()
    if spec.kind == "human_parts":
        return HumanPartsMetric(int(spec.num_classes), spec.ignore_index)
    if spec.kind == "saliency":
        return SaliencyMetric(spec.ignore_index)
    if spec.kind == "edges":
        return EdgeLossMetric(spec.pos_weight, spec.ignore_index)
    return NormalsMetric()


def _expected_target(spec: TaskSpec, b: int, h: int, w: int) -> tuple[tuple[int, ...], str]:
    if spec.kind in LABEL_KINDS:
        return (b, h, w), "(B, H, W)"
    c = head_channels(spec)
    return (b, c, h, w), f"(B, {c}, H, W)"


def validate_batch(specs: Sequence[TaskSpec], batch: Mapping) -> None:
    """Check ``batch = {"image": B x C x H x W float, "targets": {task: tensor}}`` against ``specs``.

    Shapes and dtypes always; segmentation and human-parts labels must lie in [0, C) or equal ``ignore_index``
    (one min/max); saliency and edge targets must be 0, 1 or ``ignore_index``.
    Raises ``ValueError`` naming the task, the field, the expected and the actual value.
    """
    if not isinstance(batch, Mapping) or "image" not in batch or "targets" not in batch:
        present = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"batch must be a mapping with keys 'image' and 'targets', got {present}")
    image = batch["image"]
    if (
        not isinstance(image, Tensor)
        or not image.is_floating_point()
        or image.dim() != 4
    ):
        actual = (
            f"shape {tuple(image.shape)} dtype {image.dtype}"
            if isinstance(image, Tensor)
            else type(image).__name__
        )
        raise ValueError(f"batch 'image': expected a float tensor of shape (B, C, H, W), got {actual}")
    b, _, h, w = image.shape
    targets = batch["targets"]
    if not isinstance(targets, Mapping):
        raise ValueError(f"batch 'targets': expected a mapping task -> tensor, got {type(targets).__name__}")
    for spec in specs:
        name = spec.name
        if name not in targets:
            raise ValueError(
                f"task {name!r}: target missing from batch['targets'] (keys present: {sorted(targets)})"
            )
        t = targets[name]
        if not isinstance(t, Tensor):
            raise ValueError(f"task {name!r}: target is a {type(t).__name__}, expected a torch.Tensor")
        if spec.kind in IMAGE_KINDS:
            check_image_target(spec, t, b)
            continue
        shape, pattern = _expected_target(spec, b, h, w)
        if tuple(t.shape) != shape:
            raise ValueError(
                f"task {name!r}: target shape {tuple(t.shape)} does not match the expected {pattern} = {shape}"
            )
        if spec.kind in LABEL_KINDS:
            if t.dtype != torch.int64:
                raise ValueError(
                    f"task {name!r}: target dtype {t.dtype} does not match the expected torch.int64"
                )
            _check_labels(spec, t)
        elif not t.is_floating_point():
            raise ValueError(
                f"task {name!r}: target dtype {t.dtype} does not match the expected floating dtype"
            )
        elif spec.kind in BINARY_KINDS:
            bad = t[(t != 0) & (t != 1) & (t != spec.ignore_index)]
            if bad.numel():
                raise ValueError(f"task {name!r}: target value {float(bad[0])} is not 0, 1 or "
                                 f"ignore_index={spec.ignore_index}")


def _check_labels(spec: TaskSpec, t: Tensor) -> None:
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
