"""benchmark.tasks: losses, predictions, metrics and batch validation against independent NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark import tasks
from datamodules.task_spec import TaskSpec

SEG = TaskSpec("semseg", "segmentation", num_classes=5, ignore_index=-1)
DEPTH = TaskSpec("depth", "depth")
NORMAL = TaskSpec("normal", "normals")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------- independent references


def np_confmat(gt: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    keep = (gt >= 0) & (gt < c)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (gt[keep], pred[keep]), 1)
    return cm


def np_seg_scores(cm: np.ndarray) -> tuple[float, float]:
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    return 100 * np.nanmean(iou), 100 * tp.sum() / cm.sum()


def np_angles(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Angles in degrees between normalised ``pred`` and ``gt`` (B x 3 x H x W) over pixels with gt != 0."""
    p = np.moveaxis(pred, 1, -1).reshape(-1, 3)
    g = np.moveaxis(gt, 1, -1).reshape(-1, 3)
    keep = np.linalg.norm(g, axis=1) > 0
    p, g = p[keep], g[keep]
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", p, g), -1, 1)))


def normals_batch(angles_deg: np.ndarray, rng: np.random.Generator, n_invalid: int, w: int = 8):
    """Raw predictions (unnormalised) at the given angles to random unit targets, plus zero-vector pixels."""
    n = len(angles_deg) + n_invalid
    h = math.ceil(n / w)
    g = rng.normal(size=(h * w, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a = rng.normal(size=(h * w, 3))
    u = a - np.einsum("ij,ij->i", a, g)[:, None] * g
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    th = np.radians(np.concatenate([angles_deg, rng.uniform(0, 180, h * w - len(angles_deg))]))
    p = (np.cos(th)[:, None] * g + np.sin(th)[:, None] * u) * rng.uniform(0.2, 5.0, size=(h * w, 1))
    order = rng.permutation(h * w)
    g[order[len(angles_deg) :]] = 0.0
    to_t = lambda x: torch.tensor(np.moveaxis(x.reshape(1, h, w, 3), -1, 1), dtype=torch.float32)  # noqa: E731
    return to_t(p), to_t(g)


# ----------------------------------------------------------------------------- small API


def test_head_channels_and_metric_infos():
    assert [tasks.head_channels(s) for s in (SEG, DEPTH, NORMAL)] == [5, 1, 3]
    assert [(m.key, m.direction, m.unit) for m in tasks.metric_infos(SEG)] == [
        ("miou", "higher", "percent"),
        ("pix_acc", "higher", "percent"),
    ]
    assert [m.key for m in tasks.metric_infos(DEPTH)] == ["abs_err", "rel_err", "rmse"]
    assert {m.direction for m in tasks.metric_infos(DEPTH)} == {"lower"}
    normals = {m.key: (m.direction, m.unit) for m in tasks.metric_infos(NORMAL)}
    assert normals == {
        "normal_mean": ("lower", "degrees"),
        "normal_median": ("lower", "degrees"),
        "within_11_25": ("higher", "percent"),
        "within_22_5": ("higher", "percent"),
        "within_30": ("higher", "percent"),
    }
    dirs = tasks.metric_directions([SEG, DEPTH, NORMAL])
    assert len(dirs) == 10
    assert dirs["semseg/miou"] == "higher" and dirs["depth/rmse"] == "lower" and dirs["normal/within_30"] == "higher"


def test_make_metric_keys_match_metric_infos():
    torch.manual_seed(0)
    for spec, raw, target in [
        (SEG, torch.randn(2, 5, 4, 4), torch.randint(0, 5, (2, 4, 4))),
        (DEPTH, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4) + 0.1),
        (NORMAL, torch.randn(2, 3, 4, 4), torch.nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)),
    ]:
        metric = tasks.make_metric(spec)
        metric.update(raw, target)
        out = metric.compute()
        assert list(out) == [m.key for m in tasks.metric_infos(spec)]
        assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
        assert all(metric._reductions[name] is not None for name in metric._defaults)


def test_predict_normals_unit_and_others_identity():
    raw = torch.randn(3, 3, 5, 7) * torch.logspace(-4, 3, 7)
    raw[0, :, 0, 0] = 0.0
    pred = tasks.predict(NORMAL, raw)
    norms = np.linalg.norm(_np(pred), axis=1)
    assert np.all(np.isfinite(_np(pred)))
    np.testing.assert_allclose(norms.reshape(-1)[1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(_np(pred)[1], _np(raw)[1] / np.linalg.norm(_np(raw)[1], axis=0), rtol=1e-5)
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(tasks.predict(SEG, x), x)
    assert torch.equal(tasks.predict(DEPTH, x[:, :1]), x[:, :1])


# ----------------------------------------------------------------------------- losses


def test_segmentation_loss_matches_hand_cross_entropy_with_ignore():
    torch.manual_seed(1)
    raw = torch.randn(2, 5, 6, 4, requires_grad=True)
    target = torch.randint(0, 5, (2, 6, 4))
    target[0, :3] = -1
    loss = tasks.task_loss(SEG, raw, target)
    logits, gt = _np(raw), target.numpy()
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    keep = gt != -1
    b, y, x = np.nonzero(keep)
    expected = -logp[b, gt[keep], y, x].mean()
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    spec255 = TaskSpec("semseg", "segmentation", num_classes=5, ignore_index=255)
    assert tasks.task_loss(spec255, raw, torch.where(target < 0, 255, target)).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_depth_loss_is_l1_over_valid_pixels():
    torch.manual_seed(2)
    raw = torch.randn(3, 1, 5, 5, requires_grad=True)
    target = torch.rand(3, 1, 5, 5) + 0.5
    target[target < 0.8] = 0.0
    raw_np, gt = _np(raw), _np(target)
    expected = np.abs(raw_np - gt)[gt != 0].mean()
    assert tasks.task_loss(DEPTH, raw, target).item() == pytest.approx(expected, rel=1e-6)


def test_normals_loss_is_one_minus_cosine_over_non_zero_targets():
    torch.manual_seed(3)
    raw = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)
    target[0, :, 0, :] = 0.0
    target[1, :, 2, 2] = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2.0)  # channel sum 0, still valid
    p, g = _np(raw), _np(target)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    valid = np.linalg.norm(g, axis=1) > 0
    assert valid.sum() == 2 * 16 - 4
    expected = 1.0 - (p * g).sum(axis=1)[valid].mean()
    assert tasks.task_loss(NORMAL, raw, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "spec, raw_shape, target",
    [
        (SEG, (2, 5, 3, 3), torch.full((2, 3, 3), -1)),
        (DEPTH, (2, 1, 3, 3), torch.zeros(2, 1, 3, 3)),
        (NORMAL, (2, 3, 3, 3), torch.zeros(2, 3, 3, 3)),
    ],
    ids=["segmentation", "depth", "normals"],
)
def test_loss_without_valid_pixels_is_zero_and_differentiable(spec, raw_shape, target):
    raw = torch.randn(*raw_shape, requires_grad=True)
    loss = tasks.task_loss(spec, raw, target)
    assert loss.grad_fn is not None
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert raw.grad is not None and torch.all(raw.grad == 0)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="task 'depth': prediction shape"):
        tasks.task_loss(DEPTH, torch.randn(2, 1, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="task 'semseg'"):
        tasks.task_loss(SEG, torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- segmentation metric


def test_segmentation_metric_tiny_hand_case():
    spec = TaskSpec("s", "segmentation", num_classes=2)
    metric = tasks.make_metric(spec)
    gt = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    metric.update(pred, gt)
    out = metric.compute()
    # H = [[1, 1], [0, 2]]: IoU_0 = 1/2, IoU_1 = 2/3
    assert out["miou"].item() == pytest.approx(100 * (0.5 + 2 / 3) / 2, rel=1e-6)
    assert out["pix_acc"].item() == pytest.approx(75.0, rel=1e-6)
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    metric.reset()
    metric.update(logits, gt)
    assert metric.compute()["miou"].item() == pytest.approx(100 * (0.5 + 2 / 3) / 2, rel=1e-6)


@pytest.mark.parametrize("ignore_index", [-1, 255])
def test_segmentation_metric_matches_numpy_confusion_matrix(ignore_index):
    rng = np.random.default_rng(4)
    c = 6
    spec = TaskSpec("semseg", "segmentation", num_classes=c, ignore_index=ignore_index)
    metric = tasks.make_metric(spec)
    cm = np.zeros((c, c), dtype=np.int64)
    per_batch_miou = []
    for b, (h, w) in enumerate([(8, 12), (5, 7), (16, 3)]):
        gt = rng.integers(0, c - 1, size=(b + 1, h, w))  # class c-1 never in the ground truth ...
        gt[rng.random(gt.shape) < 0.3] = ignore_index
        gt[rng.random(gt.shape) < 0.05] = -1  # outside [0, C): never counted, whatever ignore_index is
        logits = rng.normal(size=(b + 1, c, h, w)) + 2.0 * np.eye(c)[np.clip(gt, 0, c - 1)].transpose(0, 3, 1, 2)
        logits[:, c - 1] = -50.0  # ... nor predicted: its IoU is NaN and is left out of the mean
        metric.update(torch.tensor(logits, dtype=torch.float32), torch.tensor(gt))
        batch_cm = np_confmat(gt, logits.argmax(axis=1), c)
        cm += batch_cm
        per_batch_miou.append(np_seg_scores(batch_cm)[0])
    miou, pix_acc = np_seg_scores(cm)
    out = metric.compute()
    assert np.isfinite(miou)
    assert out["miou"].item() == pytest.approx(miou, rel=1e-5)
    assert out["pix_acc"].item() == pytest.approx(pix_acc, rel=1e-5)
    assert abs(np.mean(per_batch_miou) - miou) > 1e-3


# ----------------------------------------------------------------------------- depth metric


def test_depth_metric_is_global_pixel_mean_not_mean_of_batch_means():
    rng = np.random.default_rng(5)
    metric = tasks.make_metric(DEPTH)
    preds, gts, batch_abs = [], [], []
    for b, valid_frac in enumerate([0.9, 0.1, 0.5]):
        gt = rng.uniform(0.5, 10.0, size=(b + 1, 1, 6, 9))
        gt[rng.random(gt.shape) > valid_frac] = 0.0
        pred = gt + rng.normal(scale=0.3 * (b + 1), size=gt.shape)
        metric.update(torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32))
        pred32 = pred.astype(np.float32).astype(np.float64)
        gt32 = gt.astype(np.float32).astype(np.float64)
        keep = gt32 != 0
        preds.append(pred32[keep])
        gts.append(gt32[keep])
        batch_abs.append(np.abs(pred32[keep] - gt32[keep]).mean())
    p, g = np.concatenate(preds), np.concatenate(gts)
    expected = {
        "abs_err": np.abs(p - g).mean(),
        "rel_err": (np.abs(p - g) / g).mean(),
        "rmse": np.sqrt(((p - g) ** 2).mean()),
    }
    out = metric.compute()
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-5), key
    assert abs(np.mean(batch_abs) - expected["abs_err"]) > 1e-2 * expected["abs_err"]
    assert out["abs_err"].item() != pytest.approx(np.mean(batch_abs), rel=1e-3)


# ----------------------------------------------------------------------------- normals metric


def test_normals_metric_global_mean_median_and_fractions():
    rng = np.random.default_rng(6)
    metric = tasks.make_metric(NORMAL)
    batches = [
        rng.uniform(0.0, 15.0, size=301),
        rng.uniform(25.0, 60.0, size=40),
        np.concatenate([rng.uniform(5.0, 35.0, size=200), [11.25 - 1e-3, 22.5 + 1e-3, 30.0 - 1e-3]]),
    ]
    all_angles, batch_medians = [], []
    for i, angles in enumerate(batches):
        raw, gt = normals_batch(angles, rng, n_invalid=17 + 5 * i)
        metric.update(raw, gt)
        a = np_angles(_np(raw), _np(gt))
        assert len(a) == len(angles)
        all_angles.append(a)
        batch_medians.append(np.median(a))
    a = np.concatenate(all_angles)
    out = metric.compute()
    median = np.median(a)
    assert abs(np.mean(batch_medians) - median) > 1.0
    assert abs(out["normal_median"].item() - median) < 0.01
    assert out["normal_mean"].item() == pytest.approx(a.mean(), rel=1e-5)
    assert out["within_11_25"].item() == pytest.approx(100 * np.mean(a < 11.25), rel=1e-6)
    assert out["within_22_5"].item() == pytest.approx(100 * np.mean(a < 22.5), rel=1e-6)
    assert out["within_30"].item() == pytest.approx(100 * np.mean(a < 30.0), rel=1e-6)


@pytest.mark.parametrize("angles", [[10.0, 20.0], [3.0, 90.0, 179.999], [0.0, 0.0, 45.0, 45.001]])
def test_normals_median_of_sparse_angles(angles):
    rng = np.random.default_rng(7)
    raw, gt = normals_batch(np.array(angles), rng, n_invalid=3)
    metric = tasks.make_metric(NORMAL)
    metric.update(raw, gt)
    a = np_angles(_np(raw), _np(gt))
    assert abs(metric.compute()["normal_median"].item() - np.median(a)) < 0.01


# ----------------------------------------------------------------------------- empty splits and sync


@pytest.mark.parametrize(
    "spec, pred, target",
    [
        (SEG, torch.randn(1, 5, 3, 3), torch.full((1, 3, 3), -1)),
        (DEPTH, torch.rand(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)),
        (NORMAL, torch.randn(1, 3, 3, 3), torch.zeros(1, 3, 3, 3)),
    ],
    ids=["segmentation", "depth", "normals"],
)
def test_metric_without_valid_pixels_is_nan(spec, pred, target):
    metric = tasks.make_metric(spec)
    metric.update(pred, target)
    out = metric.compute()
    assert list(out) == [m.key for m in tasks.metric_infos(spec)]
    assert all(torch.isnan(v) for v in out.values())


def test_summed_states_equal_single_process_result():
    """What a DDP sum-reduction of two ranks' states gives equals one process seeing both halves."""
    torch.manual_seed(8)
    spec_data = [
        (SEG, torch.randn(4, 5, 6, 6), torch.randint(-1, 5, (4, 6, 6))),
        (DEPTH, torch.rand(4, 1, 6, 6), torch.rand(4, 1, 6, 6) * (torch.rand(4, 1, 6, 6) > 0.3)),
        (NORMAL, torch.randn(4, 3, 6, 6), torch.nn.functional.normalize(torch.randn(4, 3, 6, 6), dim=1)),
    ]
    for spec, pred, target in spec_data:
        whole, rank0, rank1 = (tasks.make_metric(spec) for _ in range(3))
        whole.update(pred, target)
        rank0.update(pred[:1], target[:1])
        rank1.update(pred[1:], target[1:])
        assert all(rank0._reductions[name].__name__ == "dim_zero_sum" for name in rank0._defaults)
        rank0.merge_state(rank1)
        a, b = whole.compute(), rank0.compute()
        assert all(torch.allclose(a[k], b[k], rtol=1e-6) for k in a), spec.kind


# ----------------------------------------------------------------------------- validate_batch


def _batch(b: int = 4, h: int = 64, w: int = 96) -> dict:
    seg = torch.randint(0, 5, (b, h, w))
    seg[0, 0, 0] = -1
    return {
        "image": torch.randn(b, 3, h, w),
        "targets": {
            "semseg": seg,
            "depth": torch.rand(b, 1, h, w),
            "normal": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1),
        },
    }


SPECS = [SEG, DEPTH, NORMAL]


def test_validate_batch_accepts_a_good_batch():
    tasks.validate_batch(SPECS, _batch())
    batch = _batch()
    spec255 = TaskSpec("semseg", "segmentation", num_classes=5, ignore_index=255)
    batch["targets"]["semseg"][0, 0, 0] = 255
    tasks.validate_batch([spec255], batch)


def test_validate_batch_wrong_shape():
    batch = _batch()
    batch["targets"]["depth"] = torch.rand(4, 64, 96)
    with pytest.raises(ValueError) as err:
        tasks.validate_batch(SPECS, batch)
    assert str(err.value) == (
        "task 'depth': target shape (4, 64, 96) does not match the expected (B, 1, H, W) = (4, 1, 64, 96)"
    )
    batch = _batch()
    batch["targets"]["semseg"] = batch["targets"]["semseg"][:, :32]
    with pytest.raises(ValueError, match=r"task 'semseg': target shape \(4, 32, 96\).*\(B, H, W\) = \(4, 64, 96\)"):
        tasks.validate_batch(SPECS, batch)


def test_validate_batch_wrong_dtype():
    batch = _batch()
    batch["targets"]["semseg"] = batch["targets"]["semseg"].int()
    with pytest.raises(ValueError, match=r"task 'semseg': target dtype torch.int32 .*torch.int64"):
        tasks.validate_batch(SPECS, batch)
    batch = _batch()
    batch["targets"]["normal"] = batch["targets"]["normal"].long()
    with pytest.raises(ValueError, match=r"task 'normal': target dtype torch.int64 .*floating"):
        tasks.validate_batch(SPECS, batch)
    batch = _batch()
    batch["image"] = batch["image"].to(torch.uint8)
    with pytest.raises(ValueError, match=r"batch 'image'.*torch.uint8"):
        tasks.validate_batch(SPECS, batch)


def test_validate_batch_missing_key():
    batch = _batch()
    del batch["targets"]["normal"]
    with pytest.raises(ValueError, match=r"task 'normal'.*missing.*\['depth', 'semseg'\]"):
        tasks.validate_batch(SPECS, batch)
    with pytest.raises(ValueError, match="'image' and 'targets'"):
        tasks.validate_batch(SPECS, {"image": torch.randn(1, 3, 2, 2)})


@pytest.mark.parametrize("bad", [5, 7, -2, 255])
def test_validate_batch_label_out_of_range(bad):
    batch = _batch()
    batch["targets"]["semseg"][1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"task 'semseg': target label {bad} .*\[0, 5\).*ignore_index=-1"):
        tasks.validate_batch(SPECS, batch)
