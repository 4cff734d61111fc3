"""Tests of IMTL-G (docs/methods.md §8): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.imtl_g import imtl_g_weights
from tests.method_properties import (
    adversarial_jacobians,
    assert_equal_projections,
    jacobian,
)
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "imtl_g", Needs.GRAMIAN,
    randomise_params=True,
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> np.ndarray:
    return g @ g.T


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize(("kind", "rtol"), [("random", 1e-9), ("conflicting", 1e-9), ("badly_scaled", 1e-4)])
def test_imtl_g_sums_to_one_and_balances_projections(kind, rtol, num_tasks):
    g = jacobian(kind, num_tasks, seed=20 + num_tasks)
    alpha = imtl_g_weights(torch.as_tensor(gram(g))).numpy()
    assert alpha.sum() == pytest.approx(1.0, abs=1e-12)
    assert_equal_projections(g, alpha @ g, rtol)


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        ([[1.0, 0.0], [0.0, 2.0]], [2 / 3, 1 / 3]),
        ([[1.0, 0.0], [1.0, 1.0]], [2 - math.sqrt(2), math.sqrt(2) - 1]),
    ],
)
def test_imtl_g_hand_cases(g, expected):
    alpha = imtl_g_weights(torch.as_tensor(gram(np.array(g)))).numpy()
    np.testing.assert_allclose(alpha, expected, atol=1e-12)


def test_imtl_g_weights_can_be_negative():
    g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7, 0.7, 0.141]])
    alpha = imtl_g_weights(torch.as_tensor(gram(g))).numpy()
    assert alpha.min() < 0
    assert_equal_projections(g, alpha @ g, 1e-9)


def test_imtl_g_sum_to_one_can_make_the_common_projection_negative():
    g = np.array([[-3.0, -1.0, 2.0], [-1.0, 0.0, 0.0], [-3.0, 0.0, -1.0]])
    alpha = imtl_g_weights(torch.as_tensor(gram(g))).numpy()
    assert alpha.sum() == pytest.approx(1.0)
    assert_equal_projections(g, alpha @ g, 1e-9)
    assert np.all(g @ (alpha @ g) < 0)


def test_imtl_g_direction_is_invariant_to_rescaling_a_task():
    g = jacobian("random", 3, seed=8)
    g10 = g.copy()
    g10[1] *= 10
    d, d10 = (imtl_g_weights(torch.as_tensor(gram(x))).numpy() @ x for x in (g, g10))
    assert_equal_projections(g10, d10, 1e-9)
    cosine = d10 @ d / (np.linalg.norm(d10) * np.linalg.norm(d))
    assert abs(cosine) == pytest.approx(1.0, abs=1e-12)
    assert not np.isclose(np.linalg.norm(d10), np.linalg.norm(d))


def test_imtl_g_zero_gradients():
    g = jacobian("zero_row", 3, seed=9)
    alpha = imtl_g_weights(torch.as_tensor(gram(g))).numpy()
    assert np.all(np.isfinite(alpha)) and alpha[-1] == 0.0
    assert alpha.sum() == pytest.approx(1.0)
    assert_equal_projections(g, alpha @ g, 1e-9)
    assert imtl_g_weights(torch.zeros(3, 3, dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]
    opposite = adversarial_jacobians()["opposite"]
    assert np.abs(imtl_g_weights(torch.as_tensor(gram(opposite))).numpy()).max() == 0.0



@pytest.mark.parametrize(("dim", "corr"), [(10, 0.0), (64, 0.9)])
@pytest.mark.parametrize("seed", range(10))
def test_imtl_g_equal_projections_on_badly_scaled_gradients(dim, corr, seed):
    """T = 10 with one gradient 1e-6 of the others (Gramian condition 1e12 to 1e15): the projections of ``d`` on
    every ``g_t/|g_t|`` agree to 1e-10 |d| (the unscaled pseudo-inverse missed by up to 0.3 |d|)."""
    rng = np.random.default_rng(seed)
    g = corr * rng.standard_normal(dim) + (1 - corr) * rng.standard_normal((10, dim))
    g[0] *= 1e-6
    jac = torch.as_tensor(g)
    alpha = imtl_g_weights(jac @ jac.T)
    d = alpha @ jac
    projections = (jac @ d) / jac.norm(dim=1)
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(projections.max() - projections.min()) <= 1e-10 * float(d.norm())
