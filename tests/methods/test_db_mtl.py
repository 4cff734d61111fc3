"""Tests of DB-MTL (docs/methods.md §16): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.engine import Engine
from benchmark.methods import Needs, create
from benchmark.methods.db_mtl import DBMTL, db_mtl_ema, db_mtl_weights
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "db_mtl", Needs.JACOBIAN,
    defaults={"beta": 0.9, "beta_sigma": 0.0, "eps": 1e-08},
    bad_values=[
        ({"beta": 1.0}, "DBMTL: beta.*1.0"),
        ({"beta_sigma": -0.5}, "DBMTL: beta_sigma.*-0.5"),
        ({"eps": True}, "DBMTL: eps.*True"),
    ],
    raw_steps=2,
)


TASK_COUNTS = (2, 3, 5)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_db_mtl_scaled_ema_gradients_all_have_the_largest_norm(kind, num_tasks):
    jacs = [torch.as_tensor(jacobian(kind, num_tasks, seed=s)) for s in range(4)]
    for eps, rtol in ((0.0, 1e-12), (1e-8, 1e-6 if kind != "badly_scaled" else 1e-2)):
        method = DBMTL(num_tasks, eps=eps)
        ema = torch.zeros_like(jacs[0])
        for jac in jacs:
            d = method.aggregate(jac)
            ema = jac + 0.9 * (ema - jac)
            torch.testing.assert_close(method.grad_buffer, ema, rtol=1e-12, atol=1e-15)
            scaled = method.last_weights[:, None] * ema
            norms, top = scaled.norm(dim=1), ema.norm(dim=1).max()
            live = ema.norm(dim=1) > 0
            torch.testing.assert_close(norms[live], top.expand(int(live.sum())), rtol=rtol, atol=0)
            assert torch.all(norms[~live] == 0)
            torch.testing.assert_close(d, scaled.sum(dim=0))
        assert int(method.steps) == len(jacs)


def test_db_mtl_ema_by_hand_and_beta_sigma():
    g1, g2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [0.0, -2.0]])
    method = DBMTL(2, beta_sigma=1.0)
    method.aggregate(g1)
    torch.testing.assert_close(method.grad_buffer, 0.1 * g1)  # beta_1 = 0.9 / 1
    method.aggregate(g2)
    torch.testing.assert_close(method.grad_buffer, g2 + 0.45 * (0.1 * g1 - g2))  # beta_2 = 0.9 / 2
    torch.testing.assert_close(db_mtl_ema(torch.zeros(2), torch.ones(2), 0.5, 0.0, 7), torch.full((2,), 0.5))
    torch.testing.assert_close(db_mtl_weights(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]]), eps=0.0),
                               torch.tensor([1.0, 5.0, 0.0], dtype=torch.float64))


def test_db_mtl_log_gradient_ignores_the_loss_scale():
    a = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]], dtype=torch.float64)

    def grad(scales, method):
        w = nn.Parameter(torch.tensor([0.3, -0.2, 0.8], dtype=torch.float64))
        losses = ((a @ w - 0.2).pow(2) + 0.1) * torch.tensor(scales, dtype=torch.float64)
        Engine(method, [w], []).step(method.transform_losses(losses))
        return w.grad.clone()

    exact, reference = grad((1.0, 1.0), DBMTL(2, eps=0.0)), grad((1.0, 1.0), DBMTL(2))
    for scales in ((7.3, 1.0), (1e-3, 40.0), (1e4, 1e-2)):
        torch.testing.assert_close(grad(scales, DBMTL(2, eps=0.0)), exact, rtol=1e-12, atol=0)
        # up to the offset: d log(c L + eps) = dL / (L + eps / c), L >= 0.1 here
        torch.testing.assert_close(grad(scales, DBMTL(2)), reference, rtol=1e-8 / min(scales) / 0.1 * 4, atol=0)
        assert not torch.allclose(grad(scales, create("ew", 2)), grad((1.0, 1.0), create("ew", 2)))
    torch.testing.assert_close(DBMTL(2).transform_losses(torch.tensor([1.0, math.e])), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="DBMTL: log"):
        DBMTL(2).transform_losses(torch.tensor([1.0, -0.5]))


def test_db_mtl_state_round_trip_restores_the_gradient_buffer():
    jacs = [torch.randn(3, 7, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    first = DBMTL(3)
    for jac in jacs[:2]:
        first.aggregate(jac)
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in first.state_dict().items()}
    assert state["grad_buffer"].shape == (3, 7) and int(state["steps"]) == 2
    resumed, fresh = DBMTL(3), DBMTL(3)
    resumed.load_state_dict(state)
    for jac in jacs[2:]:
        expected = first.aggregate(jac)
        assert torch.equal(resumed.aggregate(jac), expected)
        assert not torch.allclose(fresh.aggregate(jac), expected)
    with pytest.raises(ValueError, match=r"DBMTL: the Jacobian has shape \(3, 4\)"):
        first.aggregate(torch.ones(3, 4))

