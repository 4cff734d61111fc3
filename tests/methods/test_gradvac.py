"""Tests of GradVac (docs/methods.md §11): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.gradvac import GradVac, gradvac_coefficients
from benchmark.methods.pcgrad import pcgrad_coefficients
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "gradvac", Needs.GRAMIAN,
    defaults={"beta": 0.5, "eps": 1e-08, "grad_source": "params", "head_weighting": "own"},
    bad_values=[
        ({"beta": -0.1}, "GradVac: beta.*-0.1"),
        ({"eps": float("nan")}, "GradVac: eps.*nan"),
    ],
    raw_steps=2,
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def random_orders(num_tasks: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[j for j in rng.permutation(num_tasks).tolist() if j != i] for i in range(num_tasks)]


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradvac_zero_targets_without_conflict_is_the_sum(kind, num_tasks):
    g = np.abs(jacobian(kind, num_tasks, dim=8, seed=num_tasks))
    for eps in (0.0, 1e-8):
        w = GradVac(num_tasks, eps=eps).gramian_weights(gram(g), torch.ones(num_tasks)).numpy()
        np.testing.assert_array_equal(w, np.ones(num_tasks))


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradvac_zero_targets_is_the_pcgrad_projection(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=8, seed=10 + num_tasks)
    orders = random_orders(num_tasks, num_tasks)
    coeffs, _ = gradvac_coefficients(gram(g), torch.zeros(num_tasks, num_tasks), orders, beta=0.5, eps=0.0)
    scale = np.abs(g).max()
    np.testing.assert_allclose(coeffs.numpy() @ g, pcgrad_coefficients(gram(g), orders, eps=0.0).numpy() @ g,
                               rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradvac_pulls_each_cosine_up_to_its_target(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=8, seed=20 + num_tasks)
    rng = np.random.default_rng(num_tasks)
    targets = torch.as_tensor(rng.uniform(-0.6, 0.95, size=(num_tasks, num_tasks)))
    orders = random_orders(num_tasks, 30 + num_tasks)
    truncated = [order[:-1] for order in orders]
    after = gradvac_coefficients(gram(g), targets, orders, 0.5, eps=0.0)[0].numpy() @ g
    before = gradvac_coefficients(gram(g), targets, truncated, 0.5, eps=0.0)[0].numpy() @ g
    raised = 0
    for i, order in enumerate(orders):
        j = order[-1]
        if np.linalg.norm(g[j]) == 0 or np.linalg.norm(before[i]) == 0:
            np.testing.assert_array_equal(after[i], before[i])
            continue
        old, new, target = cosine(before[i], g[j]), cosine(after[i], g[j]), float(targets[i, j])
        if old < target:  # adjusted: the cosine is now exactly the target
            assert new == pytest.approx(target, abs=1e-9), (i, j, old, target)
            raised += 1
        else:  # nothing changes
            np.testing.assert_array_equal(after[i], before[i])
    assert raised or kind in ("collinear", "zero_row")  # cos = 1 is never below a target; a zero g_j is skipped


def test_gradvac_ema_of_the_targets_by_hand():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    phi = -1 / math.sqrt(2)
    method = GradVac(2, beta=0.5, eps=0.0)
    torch.manual_seed(0)
    w1 = method.gramian_weights(gram(g), torch.ones(2)).numpy()
    # step 1, targets 0: PCGrad; both cosines before the adjustment are phi
    torch.testing.assert_close(method.targets, torch.tensor([[0.0, 0.5 * phi], [0.5 * phi, 0.0]],
                                                           dtype=torch.float64), rtol=0, atol=1e-15)
    np.testing.assert_allclose(w1, [2.0, 1.5], atol=1e-15)  # (g0 + g1/2) + (g1 + g0)
    w2 = method.gramian_weights(gram(g), torch.ones(2)).numpy()
    # step 2: phi < target = phi/2, so both are pulled to cos = phi/2; the EMA uses the phi from before
    torch.testing.assert_close(method.targets, torch.full((2, 2), 0.75 * phi, dtype=torch.float64)
                               * (1 - torch.eye(2, dtype=torch.float64)), rtol=0, atol=1e-15)
    target = 0.5 * phi
    # |g0| = 1, |g1| = sqrt(2): c01 = |g0| (...) / (|g1| sqrt(1 - target^2)) and c10 = 2 c01
    c01 = (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2)) / (math.sqrt(2) * math.sqrt(1 - target**2))
    np.testing.assert_allclose(w2, [1 + 2 * c01, 1 + c01], rtol=1e-12)
    pc0 = g[0] + c01 * g[1]
    assert cosine(pc0, g[1]) == pytest.approx(target, abs=1e-12)
    # beta = 0 keeps the targets at 0: PCGrad at every step
    frozen = GradVac(2, beta=0.0)
    for _ in range(3):
        frozen.gramian_weights(gram(g), torch.ones(2))
    assert frozen.targets.abs().max() == 0


def test_gradvac_unreachable_target_raises_without_eps():
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    method = GradVac(2, eps=0.0)
    method.targets.fill_(1.0)
    with pytest.raises(FloatingPointError, match="GradVac: target cosine 1.0"):
        method.gramian_weights(gram(g), torch.ones(2))
    method = GradVac(2)  # LibMTL's eps keeps it finite
    method.targets.fill_(1.0)
    assert torch.isfinite(method.gramian_weights(gram(g), torch.ones(2))).all()


def test_gradvac_state_round_trip():
    g = jacobian("conflicting", 4, seed=3)
    torch.manual_seed(5)
    first = GradVac(4)
    first.gramian_weights(gram(g), torch.ones(4))
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in first.state_dict().items()}
    expected = [first.gramian_weights(gram(g * (k + 1)), torch.ones(4)) for k in range(3)]
    resumed = GradVac(4)
    resumed.load_state_dict(state)
    torch.manual_seed(77)
    got = [resumed.gramian_weights(gram(g * (k + 1)), torch.ones(4)) for k in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(first.targets, resumed.targets) and first.targets.abs().max() > 0

