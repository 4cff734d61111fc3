"""Tests of GradNorm (docs/methods.md §5): the shared asserts, then its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.engine import Engine
from benchmark.methods import Needs
from benchmark.methods.gradnorm import GradNorm, gradnorm_balance_loss, gradnorm_beta_grad, gradnorm_weights
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "gradnorm", Needs.GRAMIAN,
    defaults={"alpha": 1.5, "initial_loss": "epoch0_mean", "lr": None, "grad_source": "params",
        "head_weighting": "own"},
    bad_values=[
        ({"alpha": -1.0}, "GradNorm: alpha.*-1.0"),
        ({"initial_loss": "epoch1"}, "GradNorm: initial_loss='epoch1'"),
        ({"lr": 0.0}, "GradNorm: lr.*0.0"),
    ],
    raw_steps=2, raw_hparams={"initial_loss": "first_step"},
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_gradnorm_weights_sum_to_t_and_beta_grad_is_the_balance_loss_gradient(num_tasks):
    gen = torch.Generator().manual_seed(num_tasks)
    for kind in KINDS:
        beta = torch.randn(num_tasks, generator=gen, dtype=torch.float64)
        assert float(gradnorm_weights(beta).sum()) == pytest.approx(num_tasks, rel=1e-14)
        g = jacobian(kind, num_tasks, seed=num_tasks)
        norms = gram(g).diagonal().sqrt()
        relative = torch.rand(num_tasks, generator=gen, dtype=torch.float64) + 0.2
        for alpha in (0.0, 1.5):
            leaf = beta.clone().requires_grad_()
            (auto,) = torch.autograd.grad(gradnorm_balance_loss(leaf, norms, relative, alpha), leaf)
            torch.testing.assert_close(gradnorm_beta_grad(beta, norms, relative, alpha), auto)
            assert float(gradnorm_beta_grad(beta, norms, relative, alpha).sum()) == pytest.approx(0.0, abs=1e-12)


def test_gradnorm_beta_grad_vanishes_when_every_norm_is_on_target():
    # equal weights, equal norms, equal relative losses: G_t = Gbar r_t^alpha exactly, for every alpha
    for num_tasks in TASK_COUNTS:
        beta = torch.ones(num_tasks, dtype=torch.float64)
        norms = torch.full((num_tasks,), 2.0, dtype=torch.float64)
        relative = torch.full((num_tasks,), 0.5, dtype=torch.float64)
        assert gradnorm_beta_grad(beta, norms, relative, 1.5).abs().max() == 0
    # alpha = 1: G_t = w_t |g_t| = r_t is on target (Gbar = mean(r) = 1) with unequal norms
    beta, relative = torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)
    norms = torch.tensor([0.5, 1.5], dtype=torch.float64)
    assert gradnorm_beta_grad(beta, norms, relative, 1.0).abs().max() == 0
    leaf = beta.clone().requires_grad_()
    (auto,) = torch.autograd.grad(gradnorm_balance_loss(leaf, norms, relative, 1.0), leaf)
    assert auto.abs().max() == 0
    # off target, the task above its target is pushed down
    grad = gradnorm_beta_grad(beta, torch.tensor([0.5, 2.0], dtype=torch.float64), relative, 1.0)
    assert grad[1] > 0 > grad[0]


def test_gradnorm_update_is_the_weighted_sum_and_beta_gets_its_gradient_in_the_engine():
    gen = torch.Generator().manual_seed(4)
    method = GradNorm(3, initial_loss="first_step")
    with torch.no_grad():
        method.beta.copy_(torch.randn(3, generator=gen))
    a = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    w = nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    Engine(method, [w], []).step((a @ w).pow(2) + 0.1)
    losses0 = ((a @ w).pow(2) + 0.1).detach()
    torch.testing.assert_close(method.initial_losses, losses0)
    weights = gradnorm_weights(method.beta.detach().double())
    jac = 2 * (a @ w).detach()[:, None] * a
    torch.testing.assert_close(w.grad, weights @ jac)
    assert float(method.last_weights.sum()) == pytest.approx(3.0)
    expected = gradnorm_beta_grad(method.beta.detach().double(), jac.norm(dim=1), torch.ones(3, dtype=torch.float64),
                                  1.5)
    torch.testing.assert_close(method.beta.grad.double(), expected, rtol=1e-6, atol=1e-7)
    assert method.beta.grad.abs().max() > 0 and method.stats()["balance_loss"] > 0


def test_gradnorm_epoch0_mean_runs_ew_then_uses_the_epoch_mean():
    g = jacobian("random", 2, seed=1)
    method = GradNorm(2, alpha=1.0)
    for losses in ([2.0, 1.0], [4.0, 3.0]):
        assert method.gramian_weights(gram(g), torch.tensor(losses, dtype=torch.float64)).tolist() == [1.0, 1.0]
    assert method.beta.grad is None and not method.started
    method.on_train_epoch_end()
    assert method.started and method.initial_losses.tolist() == [3.0, 2.0]
    method.on_train_epoch_end()  # L(0) is set once
    assert method.initial_losses.tolist() == [3.0, 2.0]
    losses = torch.tensor([1.5, 2.0], dtype=torch.float64)
    method.gramian_weights(gram(g), losses)
    expected = gradnorm_beta_grad(torch.ones(2, dtype=torch.float64), gram(g).diagonal().sqrt(),
                                  torch.tensor([0.5, 1.0], dtype=torch.float64), 1.0)
    torch.testing.assert_close(method.beta.grad.double(), expected, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"GradNorm: the initial losses L\(0\) must be positive"):
        GradNorm(2, initial_loss="first_step").gramian_weights(gram(g), torch.tensor([0.0, 1.0]))


def test_gradnorm_state_round_trip_and_parameter_group():
    g = jacobian("badly_scaled", 3, seed=2)
    first = GradNorm(3, lr=0.025)
    assert first.param_lr == 0.025 and [p for p in first.parameters() if p.requires_grad] == [first.beta]
    first.gramian_weights(gram(g), torch.tensor([1.0, 2.0, 3.0]))
    first.on_train_epoch_end()
    opt = torch.optim.Adam(first.parameters(), lr=0.1)
    first.gramian_weights(gram(g), torch.tensor([0.5, 2.0, 1.0]))
    opt.step()
    resumed = GradNorm(3, lr=0.025)
    resumed.load_state_dict(first.state_dict())
    first.beta.grad = None
    losses = torch.tensor([0.4, 1.0, 2.0])
    torch.testing.assert_close(resumed.gramian_weights(gram(g), losses), first.gramian_weights(gram(g), losses),
                               rtol=0, atol=0)
    assert not torch.allclose(first.last_weights, torch.ones(3, dtype=torch.float64))
    assert torch.equal(resumed.beta.grad, first.beta.grad)

