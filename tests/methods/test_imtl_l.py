"""Tests of IMTL-L (docs/methods.md §8): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs, create
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "imtl_l", Needs.LOSSES,
    randomise_params=True,
)


def test_imtl_l_gradient_of_the_scales():
    method = create("imtl_l", 3)
    losses = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([0.3, -0.1, 0.0]))
    method.transform_losses(losses).sum().backward()
    s = method.scale.log_scale.detach().double()
    np.testing.assert_allclose(method.scale.log_scale.grad.double(), torch.exp(s) * losses - 1, atol=1e-6)

    method.scale.log_scale.grad = None
    with torch.no_grad():
        method.scale.log_scale.copy_(-torch.log(losses))
    method.transform_losses(losses).sum().backward()
    assert method.scale.log_scale.grad.abs().max() < 1e-6


def test_imtl_l_optimiser_drives_scaled_losses_to_one():
    method = create("imtl_l", 3)
    losses = torch.tensor([0.1, 1.0, 10.0])
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        (method.loss_weights(losses) * method.transform_losses(losses)).sum().backward()
        opt.step()
    np.testing.assert_allclose((method.scale.factors() * losses).numpy(), 1.0, atol=1e-4)
    assert method.stats()["scale_0"] == pytest.approx(10.0, rel=1e-3)


def test_imtl_l_contract():
    method = create("imtl_l", 2)
    assert method.needs is Needs.LOSSES and method.hparams() == {}
    assert "scale.log_scale" in method.state_dict()
    assert [p.shape for p in method.parameters()] == [torch.Size([2])]
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([math.log(2.0), 0.0]))
    jac = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(method.aggregate(jac).numpy(), [2.0, 1.0], atol=1e-6)
    assert method.loss_weights(torch.ones(2)).tolist() == [1.0, 1.0]

