"""Tests of PCGrad (docs/methods.md §9): the shared asserts, then its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.pcgrad import PCGrad, pcgrad_coefficients, pcgrad_weights
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "pcgrad", Needs.GRAMIAN,
    defaults={"eps": 1e-08, "include_self": False, "reduction": "sum", "relative_eps": False, "grad_source": "params",
        "head_weighting": "own"},
    bad_values=[
        ({"eps": -1.0}, "PCGrad: eps.*-1.0"),
        ({"eps": float("nan")}, "PCGrad: eps.*nan"),
        ({"include_self": 1}, "PCGrad: include_self.*1"),
        ({"reduction": "avg"}, "PCGrad: reduction='avg'"),
        ({"head_weighting": "both"}, "head_weighting='both'"),
    ],
)


TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def random_permutations(num_tasks: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(num_tasks).tolist() for _ in range(num_tasks)]


def non_conflicting(kind: str, num_tasks: int, seed: int) -> np.ndarray:
    """A Jacobian of the given kind with every pairwise inner product >= 0 (non-negative entries)."""
    return np.abs(jacobian(kind, num_tasks, dim=8, seed=seed))


def pcgrad_reference(g: np.ndarray, permutations, eps: float = 0.0, include_self: bool = False) -> np.ndarray:
    """Algorithm 1 of Yu et al. on the Jacobian itself, with plain loops: the projected gradients ``[T, dim]``."""
    projected = []
    for i in range(len(g)):
        gi = g[i].copy()
        for j in permutations[i]:
            if j == i and not include_self:
                continue
            dot = float(gi @ g[j])
            if dot < 0:
                gi = gi - dot / (float(g[j] @ g[j]) + eps) * g[j]
        projected.append(gi)
    return np.stack(projected)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_pcgrad_without_conflict_is_the_sum(kind, num_tasks):
    g = non_conflicting(kind, num_tasks, seed=num_tasks)
    method = PCGrad(num_tasks)
    for _ in range(3):
        w = method.gramian_weights(gram(g), torch.ones(num_tasks, dtype=torch.float64)).numpy()
        np.testing.assert_array_equal(w, np.ones(num_tasks))
    np.testing.assert_allclose(PCGrad(num_tasks, reduction="mean").aggregate(torch.as_tensor(g)).numpy(),
                               g.mean(axis=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_two_tasks_descends_both_and_projects_orthogonally(kind, seed):
    g = jacobian(kind, 2, dim=8, seed=seed)
    if kind == "random" and seed % 2:
        g[1] = -0.5 * g[0] + 0.1 * g[1]  # make half of the random pairs conflict
    perms = [[0, 1], [1, 0]]
    coeffs = pcgrad_coefficients(gram(g), perms, eps=0.0).numpy()
    pc = coeffs @ g
    d = pc.sum(axis=0)
    norms = np.linalg.norm(g, axis=1)
    scale = max(norms.max() ** 2, 1e-300)
    assert np.all(g @ d >= -1e-12 * scale), g @ d
    if g[0] @ g[1] < 0:
        assert abs(pc[0] @ g[1]) <= 1e-12 * norms[0] * norms[1]
        assert abs(pc[1] @ g[0]) <= 1e-12 * norms[0] * norms[1]
        assert not np.allclose(pc, g)
    else:
        np.testing.assert_array_equal(coeffs, np.eye(2))


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("eps", "include_self"), [(1e-8, False), (0.0, False), (1e-8, True)])
def test_pcgrad_gram_form_matches_the_jacobian_form(kind, num_tasks, eps, include_self):
    g = jacobian(kind, num_tasks, dim=8, seed=30 + num_tasks)
    perms = random_permutations(num_tasks, seed=num_tasks)
    projected = pcgrad_reference(g, perms, eps, include_self)
    coeffs = pcgrad_coefficients(gram(g), perms, eps, include_self).numpy()
    scale = np.linalg.norm(g, axis=1).max()
    np.testing.assert_allclose(coeffs @ g, projected, atol=1e-10 * scale, rtol=0)
    d = pcgrad_weights(gram(g), perms, eps, include_self).numpy() @ g
    np.testing.assert_allclose(d, projected.sum(axis=0), atol=1e-10 * scale, rtol=0)


def test_pcgrad_hand_examples():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])
    w = pcgrad_weights(gram(g), [[0, 1], [1, 0]], eps=0.0).numpy()
    np.testing.assert_allclose(w, [2.0, 1.5], atol=1e-15)
    np.testing.assert_allclose(w @ g, [0.5, 1.5], atol=1e-15)
    # g_1^PC = g_1 + g_1 . g_2 / (|g_2|^2 + eps) g_2 with eps = 1e-8 under-projects by eps / (|g_2|^2 + eps)
    np.testing.assert_allclose(pcgrad_weights(gram(g), [[1], [0]]).numpy(), [2.0, 1.0 + 1.0 / (2.0 + 1e-8)])

    # Three tasks: the order of the projections matters.
    g = np.array([[1.0, 0.0], [-0.5, 1.0], [-0.5, -1.0]])
    first = pcgrad_coefficients(gram(g), [[1, 2], [0, 2], [0, 1]], eps=0.0).numpy()
    second = pcgrad_coefficients(gram(g), [[2, 1], [0, 2], [0, 1]], eps=0.0).numpy()
    np.testing.assert_allclose(first[0], [1.0, 0.4, 0.64], atol=1e-15)
    np.testing.assert_allclose(first[0] @ g, [0.48, -0.24], atol=1e-15)
    np.testing.assert_allclose(second[0] @ g, [0.48, 0.24], atol=1e-15)


def test_pcgrad_permutations_come_from_its_own_saved_rng():
    torch.manual_seed(0)
    method = PCGrad(5)
    assert method.state_dict()["_extra_state"] == {"rng": None}
    drawn = [method.permutations() for _ in range(3)]
    assert all(sorted(p) == list(range(5)) for perms in drawn for p in perms)
    global_state = torch.get_rng_state()
    state = method.state_dict()
    expected = [method.permutations() for _ in range(4)]
    assert torch.equal(torch.get_rng_state(), global_state)  # seeded once, then independent of the global RNG

    resumed = PCGrad(5)
    resumed.load_state_dict(state)
    assert [resumed.permutations() for _ in range(4)] == expected

    torch.manual_seed(0)
    assert [PCGrad(5).permutations() for _ in range(1)] == drawn[:1]
    torch.manual_seed(1)
    assert PCGrad(5).permutations() != drawn[0]

    g = jacobian("conflicting", 5, seed=2)
    torch.manual_seed(3)
    a = PCGrad(5)
    a.gramian_weights(gram(g), torch.ones(5))
    saved = a.state_dict()
    next_weights = a.gramian_weights(gram(g), torch.ones(5))
    b = PCGrad(5)
    b.load_state_dict(saved)
    torch.testing.assert_close(b.gramian_weights(gram(g), torch.ones(5)), next_weights, rtol=0, atol=0)



def test_pcgrad_weights_use_the_drawn_permutations(monkeypatch):
    g = jacobian("conflicting", 3, seed=4)
    method = PCGrad(3, eps=0.0)
    perms = [[2, 1, 0], [0, 2, 1], [1, 0, 2]]
    monkeypatch.setattr(method, "permutations", lambda: perms)
    w = method.gramian_weights(gram(g), torch.ones(3)).numpy()
    np.testing.assert_allclose(w @ g, pcgrad_reference(g, perms).sum(axis=0), atol=1e-12)



def test_pcgrad_counts_projections_that_the_absolute_eps_shrinks():
    """Two opposite-leaning gradients of norm 1e-5: LibMTL's absolute eps = 1e-8 barely projects (counted as
    shrunk), the relative eps projects them as at norm 1."""
    g = jacobian("conflicting", 2, seed=1)
    unit = pcgrad_weights(gram(g), [[0, 1], [1, 0]])
    tiny = gram(g * 1e-5)
    method = PCGrad(2)
    absolute = method.gramian_weights(tiny, torch.ones(2))
    assert method.stats()["projections"] == 2 and method.stats()["eps_shrunk_projections"] == 2
    assert float((absolute - unit).abs().max()) > 0.1 * float(unit.abs().max())
    relative = PCGrad(2, relative_eps=True)
    torch.testing.assert_close(relative.gramian_weights(tiny, torch.ones(2)), unit, rtol=1e-7, atol=0)
    assert relative.stats()["projections"] == 2 and relative.stats()["eps_shrunk_projections"] == 0
    big = PCGrad(2)
    torch.testing.assert_close(big.gramian_weights(gram(g), torch.ones(2)), unit, rtol=1e-7, atol=0)
    assert big.stats()["eps_shrunk_projections"] == 0
