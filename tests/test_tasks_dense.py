"""human_parts, saliency and edges task kinds: losses and metrics against brute-force NumPy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark import tasks
from benchmark.tasks.binary_maps import SALIENCY_THRESHOLDS, balanced_bce
from datamodules.task_spec import TaskSpec

PARTS = TaskSpec("parts", "human_parts", num_classes=7, ignore_index=255)
SAL = TaskSpec("saliency", "saliency", ignore_index=255)
EDGE = TaskSpec("edge", "edges", ignore_index=255, pos_weight=0.95, auxiliary=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def np_balanced_bce(logit: np.ndarray, target: np.ndarray, w: float | None, ignore: int) -> float:
    """Mean over valid pixels of w·(−log σ(x)) on positives and (1−w)·(−log(1−σ(x))) on negatives."""
    valid = target != ignore
    pos = (target == 1) & valid
    if w is None:
        w = (valid.sum() - pos.sum()) / valid.sum()
    p = 1.0 / (1.0 + np.exp(-logit))
    per_pixel = np.where(pos, -w * np.log(p), -(1 - w) * np.log(1 - p))
    return float(per_pixel[valid].sum() / max(valid.sum(), 1))


def np_saliency(logits: np.ndarray, target: np.ndarray, ignore: int, beta2: float = 1.0) -> tuple[float, float]:
    """§M.4 image by image, threshold by threshold, with explicit loops."""
    prec, rec, jac = [], [], []
    for x, g in zip(logits, target, strict=True):
        keep = g != ignore
        prob = np.floor(255.0 / (1.0 + np.exp(-x.astype(np.float64)))) / 255.0
        row_p, row_r, row_j = [], [], []
        for tau in np.linspace(0.2, 0.9, 15):
            m, gt = (prob > tau)[keep], (g == 1)[keep]
            tp, fp, fn = np.sum(m & gt), np.sum(m & ~gt), np.sum(~m & gt)
            row_p.append(tp / (tp + fp + 1e-12))
            row_r.append(tp / (tp + fn + 1e-12))
            row_j.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        prec.append(row_p)
        rec.append(row_r)
        jac.append(row_j)
    p, r, j = np.mean(prec, 0), np.mean(rec, 0), np.mean(jac, 0)
    f = (1 + beta2) * p * r / (beta2 * p + r + 1e-12)
    return 100 * f.max(), 100 * j.max()


def test_thresholds_are_m4_linspace():
    assert np.allclose(SALIENCY_THRESHOLDS, np.linspace(0.2, 0.9, 15))


def test_head_channels_and_predict():
    assert tasks.head_channels(PARTS) == 7
    assert tasks.head_channels(SAL) == tasks.head_channels(EDGE) == 1
    x = torch.randn(2, 1, 3, 3)
    assert torch.allclose(tasks.predict(SAL, x), torch.sigmoid(x))
    assert [m.key for m in tasks.metric_infos(EDGE)] == ["loss"]
    assert tasks.metric_directions([PARTS, SAL, EDGE]) == {
        "parts/miou": "higher", "saliency/maxf": "higher", "saliency/miou": "higher", "edge/loss": "lower"}


def test_taskspec_checks_new_fields():
    with pytest.raises(ValueError, match="human_parts needs num_classes"):
        tasks.check_specs([TaskSpec("parts", "human_parts")])
    with pytest.raises(ValueError, match="pos_weight=0.5 needs a kind"):
        tasks.check_specs([TaskSpec("depth", "depth", pos_weight=0.5)])
    with pytest.raises(ValueError, match="pos_weight=1.5"):
        TaskSpec("edge", "edges", pos_weight=1.5)
    assert not TaskSpec("d", "depth").auxiliary and EDGE.auxiliary


def test_balanced_bce_hand_case():
    """2x2: logits 0 everywhere (BCE = log 2 per pixel), one positive, one ignored, w = 0.95."""
    raw = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 255.0]]]])
    loss = tasks.task_loss(EDGE, raw, target)
    assert loss.item() == pytest.approx((0.95 + 0.05 + 0.05) * math.log(2) / 3)
    loss.backward()
    assert raw.grad[0, 0, 1, 1] == 0
    auto = tasks.task_loss(SAL, torch.zeros(1, 1, 2, 2), target)  # HED weight: 2 negatives of 3 -> w = 2/3
    assert auto.item() == pytest.approx((2 / 3 + 2 * (1 / 3)) * math.log(2) / 3)


@pytest.mark.parametrize("w", [0.95, None])
def test_balanced_bce_against_numpy(w):
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64) * 3
    target = (torch.rand(3, 1, 5, 6, generator=g) > 0.7).double()
    target[0, 0, :2] = 255
    total, count = balanced_bce(raw, target, w, 255)
    assert (total / count).item() == pytest.approx(np_balanced_bce(_np(raw), _np(target), w, 255), rel=1e-10)


def test_binary_loss_is_zero_without_valid_pixels():
    raw = torch.randn(1, 1, 2, 2, requires_grad=True)
    loss = tasks.task_loss(EDGE, raw, torch.full((1, 1, 2, 2), 255.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(raw.grad, torch.zeros_like(raw))


def test_saliency_hand_case():
    """Image 1: GT left column, probabilities [[.95, .5], [.1, .1]]; image 2: nothing salient, nothing predicted.

    τ <= 0.45 (6 thresholds): image 1 has P = R = 1/2, J = 1/3. τ >= 0.5: P = 1, R = 1/2, J = 1/2. Image 2 has
    P = R = 0 and J = 1 everywhere. Means at τ >= 0.5: P = 1/2, R = 1/4, J = 3/4, F = 1/3, the maximum.
    """
    p = torch.tensor([[0.95, 0.5], [0.1, 0.1]], dtype=torch.float64)
    logits = torch.stack([torch.log(p / (1 - p)), torch.full((2, 2), -20.0, dtype=torch.float64)]).unsqueeze(1)
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]).unsqueeze(1)
    metric = tasks.make_metric(SAL)
    metric.update(logits, target)
    out = metric.compute()
    assert out["maxf"].item() == pytest.approx(100 / 3, abs=1e-4)
    assert out["miou"].item() == pytest.approx(75.0, abs=1e-4)


def test_saliency_brute_force_random_batches():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 1, 7, 5, generator=g) * 2
    target = (torch.rand(6, 1, 7, 5, generator=g) > 0.6).float()
    target[2, 0, 3:] = 255
    target[4] = 0
    metric = tasks.make_metric(SAL)
    metric.update(logits[:4], target[:4])
    metric.update(logits[4:], target[4:])
    out = metric.compute()
    maxf, miou = np_saliency(_np(logits)[:, 0], _np(target)[:, 0], 255)
    assert out["maxf"].item() == pytest.approx(maxf, rel=1e-5)
    assert out["miou"].item() == pytest.approx(miou, rel=1e-5)


def np_parts_miou(gt: np.ndarray, pred: np.ndarray, c: int, ignore: int) -> float:
    ious = []
    keep = gt != ignore
    for k in range(c):
        tp = np.sum((gt == k) & (pred == k) & keep)
        fp = np.sum((gt != k) & (pred == k) & keep)
        fn = np.sum((gt == k) & (pred != k) & keep)
        ious.append(tp / max(tp + fp + fn, 1e-8))
    return 100 * float(np.mean(ious))


def test_human_parts_miou_against_numpy_absent_class_counts_zero():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 7, 6, 6, generator=g)
    logits[:, 6] = -50.0
    target = torch.randint(0, 6, (3, 6, 6), generator=g)  # class 6 in neither: IoU 0, still in the mean
    target[1] = 255  # an image without persons
    metric = tasks.make_metric(PARTS)
    metric.update(logits, target)
    want = np_parts_miou(_np(target), _np(logits.argmax(1)), 7, 255)
    assert metric.compute()["miou"].item() == pytest.approx(want, rel=1e-6)
    only_person = tasks.make_metric(PARTS)
    only_person.update(logits[[0, 2]], target[[0, 2]])
    assert only_person.compute()["miou"].item() == pytest.approx(want, rel=1e-6)


def test_human_parts_hand_case():
    """gt [[0, 1], [1, 255]], pred [[0, 1], [0, 3]]: IoU_0 = 1/2, IoU_1 = 1/2, the 5 other classes 0."""
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [0, 3]]]), 7).permute(0, 3, 1, 2).float()
    metric = tasks.make_metric(PARTS)
    metric.update(logits, torch.tensor([[[0, 1], [1, 255]]]))
    assert metric.compute()["miou"].item() == pytest.approx(100 * 1.0 / 7)


def test_edge_metric_is_global_mean_of_training_loss():
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(4, 1, 5, 5, generator=g)
    target = (torch.rand(4, 1, 5, 5, generator=g) > 0.8).float()
    target[0, 0, 0] = 255
    metric = tasks.make_metric(EDGE)
    metric.update(raw[:1], target[:1])
    metric.update(raw[1:], target[1:])
    want = np_balanced_bce(_np(raw), _np(target), 0.95, 255)
    assert metric.compute()["loss"].item() == pytest.approx(want, rel=1e-6)
    assert tasks.task_loss(EDGE, raw, target).item() == pytest.approx(want, rel=1e-5)


def test_summed_states_equal_single_process_result():
    g = torch.Generator().manual_seed(4)
    cases = [
        (PARTS, torch.randn(4, 7, 5, 5, generator=g), torch.randint(0, 7, (4, 5, 5), generator=g)),
        (SAL, torch.randn(4, 1, 5, 5, generator=g), (torch.rand(4, 1, 5, 5, generator=g) > 0.5).float()),
        (EDGE, torch.randn(4, 1, 5, 5, generator=g), (torch.rand(4, 1, 5, 5, generator=g) > 0.8).float()),
    ]
    for spec, pred, target in cases:
        whole, rank0, rank1 = (tasks.make_metric(spec) for _ in range(3))
        whole.update(pred, target)
        rank0.update(pred[:1], target[:1])
        rank1.update(pred[1:], target[1:])
        assert all(rank0._reductions[name].__name__ == "dim_zero_sum" for name in rank0._defaults)
        rank0.merge_state(rank1)
        a, b = whole.compute(), rank0.compute()
        assert all(torch.allclose(a[k], b[k], rtol=1e-6) for k in a), spec.kind


def _batch(**targets) -> dict:
    return {"image": torch.zeros(2, 3, 4, 4), "targets": targets}


def test_validate_batch_new_kinds():
    ok = {"parts": torch.full((2, 4, 4), 255), "saliency": torch.ones(2, 1, 4, 4), "edge": torch.zeros(2, 1, 4, 4)}
    tasks.validate_batch([PARTS, SAL, EDGE], _batch(**ok))
    with pytest.raises(ValueError, match=r"task 'saliency': target value 0.5 is not 0, 1 or ignore_index=255"):
        tasks.validate_batch([SAL], _batch(saliency=torch.full((2, 1, 4, 4), 0.5)))
    with pytest.raises(ValueError, match=r"task 'parts': target label 7 is outside"):
        tasks.validate_batch([PARTS], _batch(parts=torch.full((2, 4, 4), 7)))
    with pytest.raises(ValueError, match=r"task 'edge': target shape \(2, 4, 4\)"):
        tasks.validate_batch([EDGE], _batch(edge=torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match=r"task 'edge': target dtype torch.int64"):
        tasks.validate_batch([EDGE], _batch(edge=torch.zeros(2, 1, 4, 4, dtype=torch.long)))
