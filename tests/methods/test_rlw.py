"""Tests of RLW (docs/methods.md §6): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.rlw import RLW, rlw_weights
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "rlw", Needs.LOSSES,
    defaults={},
    positive_loss_weights=True,
)


def draws(method: RLW, n: int) -> list[list[float]]:
    return [method.loss_weights(torch.ones(3)).tolist() for _ in range(n)]


def test_rlw_weights_on_simplex_with_mean_one_over_t():
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([rlw_weights(4, gen) for _ in range(4000)])
    assert torch.all(draws > 0)
    torch.testing.assert_close(draws.sum(dim=1), torch.ones(4000, dtype=torch.float64))
    torch.testing.assert_close(draws.mean(dim=0), torch.full((4, ), 0.25, dtype=torch.float64), atol=0.01, rtol=0)
    # lambda = softmax(eps), eps ~ N(0, I): log(lambda_i / lambda_j) = eps_i - eps_j ~ N(0, 2)
    log_ratio = (draws[:, 0] / draws[:, 1]).log()
    assert float(log_ratio.mean()) == pytest.approx(0.0, abs=0.1)
    assert float(log_ratio.std()) == pytest.approx(math.sqrt(2), abs=0.06)


def test_rlw_same_seed_same_draws_and_state_round_trip():
    torch.manual_seed(11)
    first = draws(RLW(3), 5)
    torch.manual_seed(11)
    method = RLW(3)
    assert draws(method, 5) == first
    torch.manual_seed(12)
    assert draws(RLW(3), 5) != first
    state = method.state_dict()
    expected = draws(method, 4)
    resumed = RLW(3)
    resumed.load_state_dict(state)
    torch.manual_seed(99)  # the global RNG no longer matters once the generator exists
    assert draws(resumed, 4) == expected
    assert sum(resumed.stats().values()) == pytest.approx(1.0)

