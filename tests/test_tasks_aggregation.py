"""Metric options: per-batch vs global aggregation of depth and normal errors (docs/protocols.md §M.2-M.3) and the
depth clamp of Vandenhende's evaluation, against independent NumPy computations; their wiring from the suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import tasks
from benchmark.config import load_suite
from benchmark.tasks import MetricOptions
from datamodules.task_spec import TaskSpec

DEPTH = TaskSpec("depth", "depth")
NORMAL = TaskSpec("normal", "normals")
PER_BATCH = MetricOptions("per_batch")
BATCH_SIZES = (4, 4, 1)
"""Two full batches and a short last one, as nash-mtl's NYUv2 test loader ends (drop_last False)."""
ROOT = Path(__file__).resolve().parent.parent


def depth_batches(seed: int, sizes=BATCH_SIZES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, b in enumerate(sizes):
        gt = torch.rand(b, 1, 6, 7, generator=g) * 5 + 0.1
        keep = torch.rand(b, 1, 6, 7, generator=g) > (0.2 + 0.5 * (i % 2))  # valid share varies per batch
        pred = gt + torch.randn(b, 1, 6, 7, generator=g) * (1 + i)
        out.append((pred, gt * keep))
    return out


def normal_batches(seed: int, sizes=BATCH_SIZES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, b in enumerate(sizes):
        gt = torch.nn.functional.normalize(torch.randn(b, 3, 5, 6, generator=g), dim=1)
        gt = gt * (torch.rand(b, 1, 5, 6, generator=g) > 0.1 + 0.4 * (i % 2))
        pred = gt + torch.randn(b, 3, 5, 6, generator=g) * (0.3 + 0.4 * i)
        out.append((pred, gt))
    return out


def np_depth_errors(pred: np.ndarray, gt: np.ndarray, clamp: float | None = None) -> np.ndarray:
    """abs, rel, rmse over the valid (gt != 0) pixels, as nash-mtl's ``depth_error`` and Vandenhende's RMSE."""
    pred = pred.copy()
    if clamp is not None:
        pred[pred <= 0] = clamp
    mask = gt != 0
    p, g = pred[mask], gt[mask]
    return np.array([np.abs(p - g).mean(), (np.abs(p - g) / g).mean(), np.sqrt(((p - g) ** 2).mean())])


def np_normal_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """mean, median, % within 11.25 / 22.5 / 30 degrees over the valid pixels, as nash-mtl's ``normal_error``."""
    pred = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    mask = np.any(gt != 0, axis=1)
    err = np.degrees(np.arccos(np.clip(np.sum(pred * gt, axis=1)[mask], -1, 1)))
    return np.array([err.mean(), np.median(err), *(100 * np.mean(err < t) for t in (11.25, 22.5, 30.0))])


def np_per_batch(batches, fn) -> np.ndarray:
    """``avg_cost += cost / n_batches``: every batch weighs the same, the short last one included."""
    return sum(fn(p.double().numpy(), g.double().numpy()) for p, g in batches) / len(batches)


def np_global(batches, fn) -> np.ndarray:
    return fn(np.concatenate([p.double().numpy() for p, _ in batches]),
              np.concatenate([g.double().numpy() for _, g in batches]))


def run_metric(spec: TaskSpec, options: MetricOptions, batches) -> np.ndarray:
    metric = tasks.make_metric(spec, options)
    for pred, gt in batches:
        metric.update(pred, gt)
    out = metric.compute()
    assert list(out) == [m.key for m in tasks.metric_infos(spec)]
    return np.array([float(v) for v in out.values()])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_per_batch_and_global_match_numpy(seed):
    batches = depth_batches(seed)
    per_batch, pooled = np_per_batch(batches, np_depth_errors), np_global(batches, np_depth_errors)
    np.testing.assert_allclose(run_metric(DEPTH, PER_BATCH, batches), per_batch, rtol=1e-6)
    np.testing.assert_allclose(run_metric(DEPTH, MetricOptions(), batches), pooled, rtol=1e-6)
    assert np.all(np.abs(per_batch - pooled) / pooled > 1e-3)  # the two schemes really differ here


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normals_per_batch_and_global_match_numpy(seed):
    batches = normal_batches(seed)
    per_batch, pooled = np_per_batch(batches, np_normal_errors), np_global(batches, np_normal_errors)
    np.testing.assert_allclose(run_metric(NORMAL, PER_BATCH, batches), per_batch, rtol=1e-6)
    got = run_metric(NORMAL, MetricOptions(), batches)
    np.testing.assert_allclose(got[[0, 2, 3, 4]], pooled[[0, 2, 3, 4]], rtol=1e-6)
    assert abs(got[1] - pooled[1]) <= 180.0 / 36_000  # the global median is read off 0.005-degree bins
    assert abs(per_batch[1] - pooled[1]) > 1e-2  # mean of per-batch medians != median of all pixels


def test_per_batch_median_of_even_and_odd_counts_is_numpy_median():
    gt = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 4).clone()
    angles = torch.tensor([10.0, 20.0, 40.0, 80.0])
    rad = torch.deg2rad(angles)
    pred = torch.stack([rad.cos(), rad.sin(), torch.zeros(4)]).view(1, 3, 1, 4)
    metric = tasks.make_metric(NORMAL, PER_BATCH)
    metric.update(pred, gt)  # 4 valid pixels: median 30
    metric.update(pred[..., :3], gt[..., :3])  # 3 valid pixels: median 20
    assert float(metric.compute()["normal_median"]) == pytest.approx((30.0 + 20.0) / 2, rel=1e-5)


def test_per_batch_skips_a_batch_without_valid_pixels():
    (pred, gt), = depth_batches(5, sizes=(2,))
    metric = tasks.make_metric(DEPTH, PER_BATCH)
    metric.update(pred, gt)
    metric.update(pred, torch.zeros_like(gt))
    np.testing.assert_allclose([float(v) for v in metric.compute().values()],
                               np_depth_errors(pred.double().numpy(), gt.double().numpy()), rtol=1e-6)


@pytest.mark.parametrize("spec,make", [(DEPTH, depth_batches), (NORMAL, normal_batches)])
def test_per_batch_states_sum_like_one_process(spec, make):
    """A DDP sum of two ranks' per-batch states is the mean over all batches of both ranks."""
    batches = make(3)
    whole, rank0, rank1 = (tasks.make_metric(spec, PER_BATCH) for _ in range(3))
    for i, (pred, gt) in enumerate(batches):
        whole.update(pred, gt)
        (rank0 if i % 2 else rank1).update(pred, gt)
    assert all(rank0._reductions[name].__name__ == "dim_zero_sum" for name in rank0._defaults)
    rank0.merge_state(rank1)
    a, b = whole.compute(), rank0.compute()
    assert all(torch.allclose(a[k], b[k], rtol=1e-6) for k in a)


def test_depth_clamp_sets_non_positive_predictions_as_vandenhende():
    batches = depth_batches(7)
    batches = [(p - 3.0, g) for p, g in batches]  # many predictions <= 0
    assert any(bool((p <= 0).any()) for p, _ in batches)
    clamped = run_metric(DEPTH, MetricOptions(depth_clamp=1e-9), batches)
    np.testing.assert_allclose(clamped, np_global(batches, lambda p, g: np_depth_errors(p, g, 1e-9)), rtol=1e-6)
    assert np.all(np.abs(clamped - run_metric(DEPTH, MetricOptions(), batches)) > 1e-3)
    per_batch = run_metric(DEPTH, MetricOptions("per_batch", 1e-9), batches)
    np.testing.assert_allclose(per_batch, np_per_batch(batches, lambda p, g: np_depth_errors(p, g, 1e-9)), rtol=1e-6)


def test_metric_options_are_checked():
    with pytest.raises(ValueError, match="aggregation='batch' is not one of"):
        MetricOptions("batch")
    with pytest.raises(ValueError, match="depth_clamp=0.0 must be > 0"):
        MetricOptions(depth_clamp=0.0)


def test_protocol_configs_name_their_reference_aggregation():
    """SegNet-MTAN lineage (nash-mtl / MTAN / CAGrad / FAMO code) per batch; LibMTL and Vandenhende global;
    the depth clamp only for the Vandenhende NYUD protocol (P3)."""
    protocols = ROOT / "configs" / "protocols"
    per_batch = {"nashmtl_nyuv2", "nashmtl_cityscapes", "imtl_nyuv2", "imtl_cityscapes"}
    for path in sorted(protocols.glob("*.yaml")):
        dataset = load_suite(path).dataset
        assert dataset.metric_aggregation == ("per_batch" if path.stem in per_batch else "global"), path.stem
        assert dataset.depth_clamp == (1e-9 if path.stem == "cso_nyud" else None), path.stem


def test_module_builds_its_metrics_with_the_suite_options():
    from benchmark.methods import create
    from benchmark.module import ModuleConfig, MTOModule
    from models import MODELS

    specs = [DEPTH, NORMAL]
    model = MODELS["segnet"]({"depth": 1, "normal": 3}, width=4, levels=2)
    module = MTOModule(model, specs, create("ew", 2), ModuleConfig(metric_options=MetricOptions("per_batch", 1e-9)))
    metrics = module.metrics["test"]
    assert metrics["depth"].aggregation == "per_batch" and metrics["depth"].clamp == 1e-9
    assert metrics["normal"].aggregation == "per_batch"
    assert MTOModule(model, specs, create("ew", 2)).metrics["test"]["depth"].aggregation == "global"
