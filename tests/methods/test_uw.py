"""Tests of UW (docs/methods.md §3): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.methods import Needs, create
from benchmark.methods.uw import UW, uw_loss
from benchmark.module import ModuleConfig, MTOModule
from benchmark.optim import OptimConfig
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "uw", Needs.LOSSES,
    bad_values=[
        ({"init": float("nan")}, "UW: init.*nan"),
        ({"lr": 0.0}, "UW: lr.*0.0"),
    ],
    positive_loss_weights=True,
)


def test_uw_gradient_in_s_and_its_fixed_point():
    gen = torch.Generator().manual_seed(1)
    method = UW(4)
    losses = torch.rand(4, generator=gen, dtype=torch.float64) * 3 + 0.1
    with torch.no_grad():
        method.log_var.copy_(torch.randn(4, generator=gen))
    s = method.log_var.detach().double()
    (grad,) = torch.autograd.grad(method.transform_losses(losses).sum(), method.log_var)
    torch.testing.assert_close(grad.double(), 0.5 * (1 - torch.exp(-s) * losses), rtol=1e-6, atol=1e-7)

    with torch.no_grad():
        method.log_var.copy_(losses.log())
    raw = losses.clone().requires_grad_()
    total = (method.loss_weights(raw.detach()) * method.transform_losses(raw)).sum()
    grad_s, grad_l = torch.autograd.grad(total, [method.log_var, raw])
    assert grad_s.abs().max() < 1e-6
    torch.testing.assert_close(grad_l, 1 / (2 * losses), rtol=1e-6, atol=0)
    torch.testing.assert_close(method.factors().double(), 1 / (2 * losses), rtol=1e-6, atol=0)
    assert method.stats()["scale_0"] == pytest.approx(1 / (2 * float(losses[0])), rel=1e-6)


def test_uw_loss_formula():
    losses, s = torch.tensor([2.0, 0.5]), torch.tensor([0.0, -1.0])
    torch.testing.assert_close(uw_loss(losses, s), torch.tensor([1.0, 0.25 * math.e - 0.5]))


@pytest.mark.parametrize(("hparams", "init", "lr"), [({}, 0.0, 0.025), ({"init": -0.5, "lr": None}, -0.5, None)])
def test_uw_init_options_and_parameter_group(hparams, init, lr):
    method = create("uw", 2, **hparams)
    assert method.log_var.tolist() == [init, init] and method.param_lr == lr
    assert method.hparams() == {"init": init, "lr": lr}
    with torch.no_grad():
        method.log_var.add_(3.0)
    tasks = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth")]
    module = MTOModule(SegNetMTL({"semseg": 3, "depth": 1}, width=4, levels=2), tasks, method,
                       ModuleConfig(OptimConfig(lr=1e-3, weight_decay=1e-4)))
    model_group, method_group = module.configure_optimizers().param_groups
    assert model_group["lr"] == 1e-3 and model_group["weight_decay"] == 1e-4
    assert method_group["params"] == [method.log_var] and method_group["weight_decay"] == 0.0
    assert method_group["lr"] == (1e-3 if lr is None else lr)

