"""GLS's defining property: its weights are the gradient of the geometric mean of the losses."""

import pytest
import torch
from mtobench_gls import GLS, gls_weights

from benchmark.methods.checks import validate


def test_weights_are_the_gradient_of_the_geometric_mean():
    losses = torch.tensor([0.3, 1.7, 4.0], dtype=torch.float64, requires_grad=True)
    geometric_mean = losses.prod() ** (1 / 3)
    (grad,) = torch.autograd.grad(geometric_mean, losses)
    torch.testing.assert_close(gls_weights(losses.detach()), grad)


def test_hand_computed_case():
    # L = (1 * 4)^(1/2) = 2, so w = 2 / (2 * [1, 4]) = [1, 0.25]
    torch.testing.assert_close(gls_weights(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 0.25]))


def test_equal_losses_weigh_equally_and_huge_losses_do_not_overflow():
    torch.testing.assert_close(gls_weights(torch.full((4,), 2.5)), torch.full((4,), 0.25))
    assert torch.isfinite(gls_weights(torch.tensor([1e30, 1e35, 1e38]))).all()


def test_non_positive_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="GLS.*> 0"):
        gls_weights(torch.tensor([1.0, 0.0]))


def test_passes_the_mtobench_checks():
    assert not any(validate(GLS).values()), validate(GLS)
