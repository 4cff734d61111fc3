"""The task-kind registry: every built-in kind is one entry serving head size, loss, metric, descriptors and
checks; one MetricInfo type with the leaderboard's decimals per unit."""

from __future__ import annotations

import pytest
import torch

from benchmark import tasks
from benchmark.tasks import KINDS, MetricInfo, TaskKind, register
from datamodules.task_spec import TaskSpec

BUILT_INS = ("segmentation", "human_parts", "depth", "normals", "saliency", "edges", "classification", "binary")


def test_every_built_in_kind_is_registered_once():
    assert sorted(KINDS) == sorted(BUILT_INS)
    assert all(isinstance(KINDS[k], TaskKind) and KINDS[k].name == k and KINDS[k].metrics for k in KINDS)
    with pytest.raises(ValueError, match="registered twice"):
        register("depth")(type(KINDS["depth"]))


def test_unknown_kind_names_the_spec_and_the_nearest_kinds():
    spec = TaskSpec("d", "dept")
    with pytest.raises(ValueError, match=r"TaskSpec 'd': kind='dept'.*did you mean 'depth'"):
        tasks.head_channels(spec)
    with pytest.raises(KeyError, match="unknown task kind 'dept'"):
        KINDS["dept"]


@pytest.mark.parametrize("unit,decimals", [("percent", 2), ("degrees", 2), ("metres", 4), ("ratio", 4),
                                           ("inverse_depth", 4), ("fraction", 4), ("bce", 4), (None, 4)])
def test_metric_info_decimals_follow_the_unit(unit, decimals):
    assert MetricInfo("m", "lower", unit).decimals == decimals
    assert MetricInfo("m", "higher", unit, decimals=1).decimals == 1


def test_metric_info_refuses_an_unknown_direction():
    with pytest.raises(ValueError, match="direction='up'"):
        MetricInfo("m", "up", "percent")


def test_metric_table_is_the_record_metrics_field():
    specs = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth")]
    assert tasks.metric_table(specs) == {
        "semseg/miou": {"direction": "higher", "unit": "percent"},
        "semseg/pix_acc": {"direction": "higher", "unit": "percent"},
        "depth/abs_err": {"direction": "lower", "unit": "metres"},
        "depth/rel_err": {"direction": "lower", "unit": "ratio"},
        "depth/rmse": {"direction": "lower", "unit": "metres"},
    }


def test_taskspec_checks_only_kind_independent_ranges():
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        TaskSpec("s", "segmentation", num_classes=1)
    with pytest.raises(ValueError, match="kind='' must be a non-empty string"):
        TaskSpec("s", "")
    spec = TaskSpec("s", "segmentation")
    with pytest.raises(ValueError, match="segmentation needs num_classes >= 2, got None"):
        tasks.make_metric(spec)


@pytest.mark.parametrize("kind", BUILT_INS)
def test_each_kind_serves_the_whole_dispatch(kind):
    """head size -> a raw output of that size -> loss, prediction, metric keys = descriptors, target check."""
    spec = TaskSpec("t", kind, num_classes=3 if KINDS[kind].needs_classes else None,
                    ignore_index=255 if kind in ("saliency", "edges", "human_parts") else -1)
    b, h, w = 2, 4, 5
    c = tasks.head_channels(spec)
    image_level = kind in ("classification", "binary")
    raw = torch.randn((b, c) if image_level else (b, c, h, w), requires_grad=True)
    shape, _ = KINDS[kind].target_shape(spec, b, h, w)
    if KINDS[kind].needs_classes:
        target = torch.randint(0, 3, (b,) if image_level else shape)
    elif kind == "normals":
        target = torch.nn.functional.normalize(torch.randn(shape), dim=1)
    else:
        target = torch.randint(0, 2, (b,) if image_level else shape).float() + (kind == "depth")
    tasks.validate_batch([spec], {"image": torch.zeros(b, 3, h, w), "targets": {"t": target}})
    loss = tasks.task_loss(spec, raw, target)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and raw.grad is not None
    assert tasks.predict(spec, raw).shape == raw.shape
    metric = tasks.make_metric(spec)
    metric.update(raw.detach(), target)
    assert list(metric.compute()) == [m.key for m in tasks.metric_infos(spec)]
