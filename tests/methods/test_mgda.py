"""Tests of MGDA (docs/methods.md §7): the shared asserts, then its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.mgda import MGDA
from tests.method_properties import (
    jacobian,
)
from tests.methods.shared import MGDA_BAD_VALUES, shared_asserts

test_shared = shared_asserts(
    "mgda", Needs.GRAMIAN,
    bad_values=MGDA_BAD_VALUES,
    randomise_params=True,
)


def gram(g: np.ndarray) -> np.ndarray:
    return g @ g.T


def weights(method, g: np.ndarray, losses=None) -> np.ndarray:
    m = torch.as_tensor(gram(g))
    losses = torch.ones(g.shape[0], dtype=torch.float64) if losses is None else torch.as_tensor(losses)
    return method.gramian_weights(m, losses).numpy()


def normalise_rows(g: np.ndarray, losses: np.ndarray, normalization: str) -> np.ndarray:
    norms = np.linalg.norm(g, axis=1)
    n = {"none": np.ones(len(g)), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    return g / n[:, None]


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_normalization_is_the_min_norm_of_normalised_gradients(normalization):
    g = jacobian("random", 3, seed=2) * np.array([[0.1], [1.0], [10.0]])
    losses = np.array([0.5, 2.0, 7.0])
    alpha = weights(MGDA(3, normalization=normalization), g, losses)
    expected = weights(MGDA(3), normalise_rows(g, losses, normalization))
    np.testing.assert_allclose(alpha, expected, atol=1e-9)


def test_mgda_normalization_invariances():
    g = jacobian("random", 3, seed=4)
    losses = np.array([0.5, 2.0, 7.0])
    g10, losses10 = g.copy(), losses.copy()
    g10[0] *= 10
    losses10[0] *= 10

    def alpha(normalization, jac, ls):
        return weights(MGDA(3, normalization=normalization), jac, ls)

    assert not np.allclose(alpha("none", g10, losses), alpha("none", g, losses), atol=1e-3)
    np.testing.assert_allclose(alpha("l2", g10, losses), alpha("l2", g, losses), atol=1e-9)
    np.testing.assert_allclose(alpha("loss+", g10, losses), alpha("loss+", g, losses), atol=1e-9)
    np.testing.assert_allclose(alpha("loss", g10, losses10), alpha("loss", g, losses), atol=1e-9)
    assert not np.allclose(alpha("loss+", g, losses10), alpha("loss+", g, losses), atol=1e-3)


def test_mgda_update_applies_alpha_to_unnormalised_gradients():
    g = jacobian("random", 3, seed=6) * np.array([[0.1], [1.0], [10.0]])
    method = MGDA(3, normalization="l2")
    direction = method.aggregate(torch.as_tensor(g), torch.ones(3, dtype=torch.float64)).numpy()
    alpha = method.last_weights.numpy()
    np.testing.assert_allclose(direction, alpha @ g, atol=1e-12)
    assert not np.allclose(direction, alpha @ normalise_rows(g, np.ones(3), "l2"), atol=1e-3)
    assert alpha.sum() == pytest.approx(1.0)


def test_mgda_loss_normalization_guards():
    g = jacobian("zero_row", 3, seed=1)
    for normalization in ("l2", "loss", "loss+"):
        alpha = weights(MGDA(3, normalization=normalization), g, np.array([1.0, 2.0, 0.0]))
        assert np.all(np.isfinite(alpha))
        np.testing.assert_allclose(alpha, [0.0, 0.0, 1.0], atol=1e-12)
    with pytest.raises(ValueError, match="non-negative losses"):
        weights(MGDA(3, normalization="loss"), g, np.array([1.0, -2.0, 3.0]))


def test_mgda_official_two_point_clip():
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(weights(MGDA(2), g), [1.0, 0.0])
    np.testing.assert_allclose(weights(MGDA(2, official_two_point_clip=True), g), [0.999, 0.001])


def test_mgda_stats():
    method = MGDA(3)
    assert method.stats() == {}
    weights(method, jacobian("conflicting", 3, seed=3))
    stats = method.stats()
    assert set(stats) == {"weight_0", "weight_1", "weight_2", "solver_iterations"}
    assert sum(stats[f"weight_{t}"] for t in range(3)) == pytest.approx(1.0)



def test_mgda_weight_sum_tasks_is_t_times_the_simplex_solution():
    """nash-mtl's ``sol * T`` (docs/methods.md §7): the same direction, T times as long."""
    g = np.random.default_rng(3).normal(size=(3, 7))
    one, tasks = weights(MGDA(3), g), weights(MGDA(3, weight_sum="tasks"), g)
    np.testing.assert_allclose(one.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(tasks, 3 * one, rtol=1e-12)
    with pytest.raises(ValueError, match="weight_sum"):
        MGDA(3, weight_sum="two")
