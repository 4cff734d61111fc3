"""SegNetMTL: shapes, the mask unpooling, shared vs task parameters, and head bias initialisation."""

import pytest
import torch
from torch.nn import functional as F

from benchmark.config import SuiteConfig
from benchmark.runner import create_model
from datamodules.synthetic_scenes import TYPICAL_DEPTH
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL, pool_with_first_max_mask, pool_with_mask, unpool_with_mask

HEADS = {"semseg": 5, "depth": 1, "normal": 3}


@pytest.mark.parametrize("task_bn", [False, True])
def test_output_shapes_and_parameter_split(task_bn):
    model = SegNetMTL(HEADS, width=4, levels=2, task_bn=task_bn)
    out = model(torch.randn(2, 3, 16, 24))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, 16, 24) for k, c in HEADS.items()}
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in HEADS]
    assert sum(map(len, per_task)) + len(shared) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 10, 24))


def test_mask_unpooling_puts_each_maximum_back_in_place():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pooled, mask = pool_with_mask(x)
    reference_pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(pooled, reference_pooled)
    expected = torch.zeros(2, 3, 64).scatter(2, indices.flatten(2), pooled.flatten(2)).view_as(x)
    assert torch.equal(unpool_with_mask(pooled, mask), expected)


def test_first_max_unpooling_equals_max_unpool2d_with_ties():
    """Ties (ReLU zeros, a constant window) go to the first maximum in row-major order, as MaxPool2d picks."""
    x = torch.relu(torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0)))
    x[0, 0, :2, :2] = 1.0
    pooled, mask = pool_with_first_max_mask(x)
    reference_pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(pooled, reference_pooled)
    values = torch.randn_like(pooled)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # max_unpool2d has no deterministic CPU kernel; this is the reference
    try:
        reference = F.max_unpool2d(values, indices, 2)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert torch.equal(unpool_with_mask(values, mask), reference)
    assert not torch.equal(unpool_with_mask(values, pool_with_mask(x)[1]), reference)


def test_head_bias_starts_the_named_heads_there():
    model = SegNetMTL(HEADS, width=4, levels=2, head_bias={"depth": 2.5})
    assert torch.all(model.heads["depth"][-1].bias == 2.5)
    with pytest.raises(ValueError, match="'dept'"):
        SegNetMTL(HEADS, width=4, levels=2, head_bias={"dept": 1.0})


def test_runner_applies_the_task_output_bias():
    tasks = [TaskSpec("semseg", "segmentation", num_classes=5), TaskSpec("depth", "depth", output_bias=TYPICAL_DEPTH)]
    suite = SuiteConfig(name="t", methods=[])
    suite.model.params = {"width": 4, "levels": 2}
    model = create_model(suite, tasks)
    assert torch.all(model.heads["depth"][-1].bias == TYPICAL_DEPTH)
    assert not torch.all(model.heads["semseg"][-1].bias == TYPICAL_DEPTH)
