"""Tests of SI (docs/methods.md §2): the shared asserts, then its defining properties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.engine import Engine
from benchmark.methods import Needs, create
from benchmark.methods.si import SI, si_weights
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "si", Needs.LOSSES,
    defaults={},
    positive_loss_weights=True,
)


def toy_losses(w: torch.Tensor, scales=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Three positive, differently shaped losses of a shared parameter ``w`` [4]."""
    a = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.3, 0.1, -1.0, 2.0], [-0.5, 1.5, 0.2, 0.7]], dtype=w.dtype)
    b = torch.tensor([0.2, -0.4, 1.0], dtype=w.dtype)
    losses = (a @ w - b).pow(2) + torch.tensor([0.1, 0.3, 0.05], dtype=w.dtype) + w.pow(2).sum() * 0.01
    return losses * torch.tensor(scales, dtype=w.dtype)


def engine_grad(method, scales=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """The shared gradient the real engine writes for ``method`` on the toy problem."""
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64))
    Engine(method, [w], []).step(method.transform_losses(toy_losses(w, scales)))
    return w.grad.clone()


def test_si_gradient_is_invariant_to_loss_scale():
    reference = engine_grad(SI(3))
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64))
    toy_losses(w).log().sum().backward()
    torch.testing.assert_close(reference, w.grad)
    for scales in ((7.3, 1.0, 1.0), (1.0, 1e-3, 40.0), (1e4, 1e4, 1e-4)):
        torch.testing.assert_close(engine_grad(SI(3), scales), reference)
        assert not torch.allclose(engine_grad(create("ew", 3), scales), engine_grad(create("ew", 3)))


def test_si_weights_and_aggregate():
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(si_weights(losses), torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(SI(3).aggregate(jac, losses), (jac / losses[:, None]).sum(dim=0))
    method = SI(3)
    method.loss_weights(losses)
    assert method.stats() == {"weight_0": 2.0, "weight_1": 0.5, "weight_2": 0.25}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_si_rejects_non_positive_losses(bad):
    with pytest.raises(ValueError, match=r"SI: .*> 0.*tasks \[1\]"):
        SI(3).loss_weights(torch.tensor([1.0, bad, 2.0]))
    with pytest.raises(ValueError, match="SI"):
        SI(3).aggregate(torch.ones(3, 2), torch.tensor([1.0, 2.0, bad]))

