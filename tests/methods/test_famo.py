"""Tests of FAMO (docs/methods.md §15): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.methods import Needs
from benchmark.methods.famo import FAMO, famo_logit_grad, famo_weights
from benchmark.module import MTOModule
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "famo", Needs.LOSSES,
    bad_values=[
        ({"lr": -1.0}, "FAMO: lr.*-1.0"),
        ({"gamma": -0.001}, "FAMO: gamma.*-0.001"),
        ({"optimizer": "adamw"}, "FAMO: optimizer='adamw'"),
        ({"min_losses": [0.0]}, r"FAMO: min_losses=\[0.0\]"),
        ({"bn_update": "yes"}, "FAMO: bn_update.*'yes'"),
    ],
    positive_loss_weights=True,
)


def test_famo_effective_weights_are_the_gradient_of_the_log_objective():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, generator=gen, dtype=torch.float64)
    losses = (torch.rand(4, generator=gen, dtype=torch.float64) * 5 + 0.01).requires_grad_()
    w = famo_weights(logits, losses)
    assert torch.all(w > 0) and float(w.sum()) == pytest.approx(1.0)
    z, d = torch.softmax(logits, 0), losses.detach() + 1e-8
    c = (z / d).sum()
    ((z * torch.log(losses + 1e-8)).sum() / c).backward()
    torch.testing.assert_close(w, losses.grad)
    torch.testing.assert_close(w, z / (c * d))
    method = FAMO(4)
    torch.testing.assert_close(method.loss_weights(losses.detach()), torch.full((4,), 1.0, dtype=torch.float64)
                               / (losses.detach() + 1e-8) / (1 / (losses.detach() + 1e-8)).sum())
    with pytest.raises(ValueError, match="FAMO: needs every loss above its minimum"):
        FAMO(2, min_losses=[0.5, 0.0]).loss_weights(torch.tensor([0.4, 1.0]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_famo_equal_log_decrease_changes_logits_only_by_weight_decay(optimizer):
    before = torch.tensor([2.0, 0.5, 7.0, 1.2], dtype=torch.float64)
    after = before * math.exp(-0.3)
    logits = torch.tensor([0.5, -0.2, 0.1, 0.0])
    assert famo_logit_grad(logits, before, after).abs().max() < 1e-6
    method = FAMO(4, optimizer=optimizer, gamma=1e-2)
    method.logits.copy_(logits)
    method.after_step(before, after)
    if optimizer == "sgd":
        torch.testing.assert_close(method.logits, logits * (1 - 0.025 * 1e-2))
    else:
        param = logits.clone().requires_grad_()
        reference = torch.optim.Adam([param], lr=0.025, weight_decay=1e-2)
        param.grad = torch.zeros(4)
        reference.step()
        torch.testing.assert_close(method.logits, param.detach(), atol=1e-6, rtol=0)
    assert not torch.equal(method.logits, logits)


def test_famo_single_sgd_update_by_hand():
    before = torch.tensor([2.0, 2.0], dtype=torch.float64)
    after = torch.tensor([2 * math.exp(-1.0), 2 * math.exp(-0.5)], dtype=torch.float64)
    # z = [1/2, 1/2], delta = [1, 0.5], z.delta = 0.75 -> grad = z * (delta - 0.75) = [0.125, -0.125]
    torch.testing.assert_close(famo_logit_grad(torch.zeros(2), before, after), torch.tensor([0.125, -0.125]))
    method = FAMO(2, optimizer="sgd", lr=0.1, gamma=0.5)
    method.after_step(before, after)
    torch.testing.assert_close(method.logits, torch.tensor([-0.0125, 0.0125]))
    # second step: same losses -> grad from the new logits, plus the weight decay 0.5 * xi
    xi = torch.tensor([-0.0125, 0.0125])
    z = torch.softmax(xi, 0)
    delta = torch.tensor([1.0, 0.5])
    grad = z * (delta - z @ delta)
    method.after_step(before, after)
    torch.testing.assert_close(method.logits, xi - 0.1 * (grad + 0.5 * xi))
    # the task whose loss fell faster loses weight
    assert method.logits[0] < method.logits[1]


def test_famo_adam_matches_torch_adam_and_first_step_is_lr_sign():
    gen = torch.Generator().manual_seed(5)
    method = FAMO(3, lr=0.025, gamma=1e-3)
    param = torch.zeros(3, requires_grad=True)
    reference = torch.optim.Adam([param], lr=0.025, weight_decay=1e-3)
    for step in range(6):
        before = torch.rand(3, generator=gen) + 0.5
        after = before * (1 - 0.3 * torch.rand(3, generator=gen))
        param.grad = famo_logit_grad(param.detach(), before, after)
        reference.step()
        method.after_step(before, after)
        if step == 0:
            torch.testing.assert_close(method.logits, -0.025 * torch.sign(param.grad), atol=1e-6, rtol=0)
        torch.testing.assert_close(method.logits, param.detach(), atol=1e-6, rtol=1e-5)
    inner = method.inner_optimizer()
    assert isinstance(inner, torch.optim.Adam) and inner.param_groups[0]["params"][0] is method.logits
    assert float(inner.state_dict()["state"][0]["step"]) == 6 and method.logits.grad is None
    assert inner.param_groups[0]["lr"] == 0.025 and inner.param_groups[0]["weight_decay"] == 1e-3


def test_famo_inner_optimizer_is_lazy_and_follows_the_logits():
    method = FAMO(2, optimizer="sgd", lr=0.1, gamma=0.5)
    assert method._inner is None and method.get_extra_state() == {"rng": None, "optimizer": None, "after_step_skips": 0}
    method.after_step(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.5]))
    assert isinstance(method.inner_optimizer(), torch.optim.SGD)
    moved = method.double()  # replaces the logits buffer: the next step must update the new tensor
    before = moved.logits.clone()
    moved.after_step(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.5]))
    assert moved.logits.dtype == torch.float64 and not torch.equal(moved.logits, before)
    assert moved.inner_optimizer().param_groups[0]["params"][0] is moved.logits


def test_famo_state_round_trip_restores_logits_and_adam_state():
    gen = torch.Generator().manual_seed(8)
    pairs = [(b, b * (0.5 + 0.5 * torch.rand(3, generator=gen))) for b in torch.rand(6, 3, generator=gen) + 0.5]
    first = FAMO(3)
    for b, a in pairs[:3]:
        first.after_step(b, a)
    resumed, fresh = FAMO(3), FAMO(3)
    state = first.state_dict()
    resumed.load_state_dict(state)
    fresh.logits.copy_(first.logits)
    for b, a in pairs[3:]:
        for m in (first, resumed, fresh):
            m.after_step(b, a)
    assert torch.equal(first.logits, resumed.logits)
    # the saved optimizer state is a copy: the steps taken since did not change it
    assert float(state["_extra_state"]["optimizer"]["state"][0]["step"]) == 3
    assert float(first.get_extra_state()["optimizer"]["state"][0]["step"]) == 6
    assert not torch.allclose(first.logits, fresh.logits, atol=1e-6)
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(first.loss_weights(loss), resumed.loss_weights(loss))


def test_famo_skips_non_finite_after_losses_and_keeps_logits_out_of_the_optimizer():
    method = FAMO(2)
    method.after_step(torch.tensor([1.0, 1.0]), torch.tensor([float("nan"), 1.0]))
    assert method.logits.tolist() == [0.0, 0.0] and method.stats()["after_step_skips"] == 1.0
    assert [p for p in method.parameters() if p.requires_grad] == []


def test_famo_bn_update_option_reaches_the_after_step_pass():
    tasks = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth")]
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 16, 24, generator=gen),
             "targets": {"semseg": torch.randint(0, 3, (2, 16, 24), generator=gen),
                         "depth": torch.rand(2, 1, 16, 24, generator=gen) + 1}}
    for bn_update in (False, True):
        module = MTOModule(SegNetMTL({"semseg": 3, "depth": 1}, width=4, levels=2), tasks,
                           FAMO(2, bn_update=bn_update))
        module.train()
        bn = next(m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d))
        mean = bn.running_mean.clone()
        losses = module._losses_after_step(batch)
        assert losses.shape == (2,) and not losses.requires_grad
        assert torch.equal(bn.running_mean, mean) is not bn_update

