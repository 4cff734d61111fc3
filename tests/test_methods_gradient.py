"""Property tests of the gradient-manipulation methods PCGrad, CAGrad and UPGrad (docs/methods.md §9, 12, 17)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from benchmark.config import load_suite
from benchmark.methods import Needs, cagrad, create, get, upgrad
from benchmark.methods.cagrad import CAGrad, cagrad_dual, cagrad_weights, dual_cone_projection
from benchmark.methods.pcgrad import PCGrad, pcgrad_coefficients, pcgrad_weights
from benchmark.methods.upgrad import UPGrad, upgrad_weights
from benchmark.runner import run_suite
from tests.method_properties import KINDS, adversarial_jacobians, jacobian
from tests.test_runner import records, write_suite

METHODS = ("pcgrad", "cagrad", "upgrad")
TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def random_permutations(num_tasks: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(num_tasks).tolist() for _ in range(num_tasks)]


def non_conflicting(kind: str, num_tasks: int, seed: int) -> np.ndarray:
    """A Jacobian of the given kind with every pairwise inner product >= 0 (non-negative entries)."""
    return np.abs(jacobian(kind, num_tasks, dim=8, seed=seed))


# --------------------------------------------------------------------------------------- PCGrad


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

    method.reset()
    assert method.state_dict()["_extra_state"] == {"rng": None} and method.last_weights is None


def test_pcgrad_weights_use_the_drawn_permutations(monkeypatch):
    g = jacobian("conflicting", 3, seed=4)
    method = PCGrad(3, eps=0.0)
    perms = [[2, 1, 0], [0, 2, 1], [1, 0, 2]]
    monkeypatch.setattr(method, "permutations", lambda: perms)
    w = method.gramian_weights(gram(g), torch.ones(3)).numpy()
    np.testing.assert_allclose(w @ g, pcgrad_reference(g, perms).sum(axis=0), atol=1e-12)


# --------------------------------------------------------------------------------------- CAGrad


def cagrad_primal_reference(g: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``argmax_{|d - g_0| <= c |g_0|} min_t <g_t, d>`` by SLSQP over ``(d, s)`` directly: max ``s`` s.t.
    ``G d >= s`` and ``|d - g_0|^2 <= (c |g_0|)^2``. Returns ``(d, min_t <g_t, d>)``."""
    t, dim = g.shape
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    res = minimize(
        lambda z: -z[-1],
        np.concatenate([g0, [np.min(g @ g0)]]),
        jac=lambda z: np.concatenate([np.zeros(dim), [-1.0]]),
        constraints=[
            {"type": "ineq", "fun": lambda z: g @ z[:-1] - z[-1], "jac": lambda z: np.hstack([g, -np.ones((t, 1))])},
            {"type": "ineq", "fun": lambda z: radius**2 - np.sum((z[:-1] - g0) ** 2),
             "jac": lambda z: np.concatenate([-2 * (z[:-1] - g0), [0.0]])},
        ],
        method="SLSQP",
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    d = res.x[:-1]
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-6), res
    return d, float(np.min(g @ d))


def cagrad_direction(g: np.ndarray, c: float, rescale: int = 0, update_scale: str = "mean") -> np.ndarray:
    method = CAGrad(len(g), c=c, rescale=rescale, update_scale=update_scale)
    return method.gramian_weights(gram(g), torch.ones(len(g))).numpy() @ g


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_cagrad_c0_is_the_average_gradient(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=num_tasks)
    for rescale in (0, 1, 2):
        np.testing.assert_array_equal(CAGrad(num_tasks, c=0.0, rescale=rescale).gramian_weights(
            gram(g), torch.ones(num_tasks)).numpy(), np.ones(num_tasks))
        np.testing.assert_allclose(cagrad_direction(g, 0.0, rescale), g.mean(axis=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("c", [0.4, 0.9])
def test_cagrad_maximises_the_worst_improvement_over_the_ball(kind, num_tasks, c):
    g = jacobian(kind, num_tasks, dim=6, seed=40 + num_tasks)
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    scale = (g**2).sum(axis=1).max()
    d = cagrad_direction(g, c)
    value = np.min(g @ d)
    assert value >= np.min(g @ g0) - 1e-12 * scale
    d_ref, value_ref = cagrad_primal_reference(g, c)
    assert value == pytest.approx(value_ref, abs=1e-7 * scale)
    if np.isclose(np.linalg.norm(d - g0), radius, rtol=1e-9, atol=0):
        if kind not in ("badly_scaled", "zero_row"):  # there the maximiser is ill-conditioned or not unique
            np.testing.assert_allclose(d, d_ref, atol=1e-6 * math.sqrt(scale), rtol=0)
    else:  # g_w* = 0: 0 is in the hull and the best worst-case improvement is 0
        assert kind == "zero_row"
        assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9)
        assert value == pytest.approx(0.0, abs=1e-12 * scale) and value_ref <= 1e-7 * scale


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", ["random", "conflicting", "collinear", "badly_scaled"])
def test_cagrad_without_rescale_moves_exactly_to_the_ball_boundary(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=50 + num_tasks)
    g0 = g.mean(axis=0)
    for c in (0.1, 0.4, 1.5):
        d = cagrad_direction(g, c)
        assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-9)
        assert np.min(g @ d) >= np.min(g @ g0) - 1e-12 * (g**2).sum(axis=1).max()


def test_cagrad_degenerate_hull_projects_the_average_on_the_dual_cone():
    g = jacobian("zero_row", 5, dim=6, seed=25)
    g0 = g.mean(axis=0)
    assert np.min(g @ g0) < 0
    d = cagrad_direction(g, 0.4)
    assert np.all(g @ d >= -1e-12) and np.linalg.norm(d - g0) < 0.4 * np.linalg.norm(g0)
    coeffs = dual_cone_projection(g @ g.T, np.full(5, 0.2))
    np.testing.assert_allclose(coeffs @ g, d, atol=1e-12)
    # the projection is the nearest point of the cone: moving along any feasible direction does not get closer
    rng = np.random.default_rng(0)
    for x in rng.standard_normal((200, 6)):
        if np.all(g @ x >= 0):
            assert np.linalg.norm(x - g0) >= np.linalg.norm(d - g0) - 1e-12


def test_cagrad_hand_example_scales_and_rescales():
    g = np.array([[1.0, 0.0], [0.0, 1.0]])  # symmetric: g_w* = g_0, d = (1 + c) g_0
    for rescale, divisor in ((0, 1.0), (1, 1.16), (2, 1.4)):
        np.testing.assert_allclose(cagrad_direction(g, 0.4, rescale), [0.7 / divisor] * 2, rtol=1e-9)
        w = CAGrad(2, rescale=rescale).gramian_weights(gram(g), torch.ones(2)).numpy()
        np.testing.assert_allclose(w, [1.4 / divisor] * 2, rtol=1e-9)  # native scale = T x the mean
        w_sum = CAGrad(2, rescale=rescale, update_scale="sum").gramian_weights(gram(g), torch.ones(2)).numpy()
        np.testing.assert_array_equal(w, w_sum)
    np.testing.assert_allclose(cagrad_direction(np.array([[3.0, 4.0]]), 0.4), [4.2, 5.6], rtol=1e-12)


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_cagrad_dual_reaches_the_optimum_of_a_grid_and_the_1d_solve(num_tasks):
    g = jacobian("conflicting", num_tasks, seed=7)
    m = g @ g.T / (g @ g.T).diagonal().mean()
    w, iterations = cagrad_dual(m, 0.4)
    assert 0 < iterations <= 1000 and abs(w.sum() - 1) < 1e-12 and np.all(w >= 0)
    radius = 0.4 * math.sqrt(m.mean())
    value = w @ m.mean(axis=1) + radius * math.sqrt(w @ m @ w)
    samples = np.random.default_rng(1).dirichlet(np.ones(num_tasks) * 0.3, size=20000)
    grid = samples @ m.mean(axis=1) + radius * np.sqrt(np.einsum("ni,ij,nj->n", samples, m, samples))
    assert value <= grid.min() + 1e-12
    two = m[:2, :2]
    w2, _ = cagrad_dual(two, 0.4)
    xs = np.linspace(0.0, 1.0, 200_001)
    b2, r2 = two.mean(axis=1), 0.4 * math.sqrt(two.mean())
    curve = xs * b2[0] + (1 - xs) * b2[1] + r2 * np.sqrt(
        xs**2 * two[0, 0] + 2 * xs * (1 - xs) * two[0, 1] + (1 - xs) ** 2 * two[1, 1])
    assert abs(w2[0] - xs[curve.argmin()]) <= 1e-5


def test_cagrad_solver_failure_and_iteration_cap_raise(monkeypatch):
    g = jacobian("conflicting", 5, seed=5)
    with pytest.raises(RuntimeError, match="CAGrad: SLSQP failed.*Iteration limit"):
        CAGrad(5, max_iter=1).gramian_weights(gram(g), torch.ones(5))
    with pytest.raises(RuntimeError, match="CAGrad: the 1-D solver failed"):
        CAGrad(2, max_iter=1, tol=1e-15).gramian_weights(gram(g[:2]), torch.ones(2))

    class Failed:
        success, status, message, nit, x = False, 8, "Positive directional derivative for linesearch", 3, None

    monkeypatch.setattr(cagrad, "minimize", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match="Positive directional derivative"):
        cagrad_weights(gram(g), 0.4)
    method = CAGrad(3)
    with pytest.raises(RuntimeError):
        method.gramian_weights(gram(g[:3]), torch.ones(3))
    assert method.last_weights is None


def test_cagrad_stats_and_reset():
    method = CAGrad(3)
    assert method.stats() == {}
    method.gramian_weights(gram(jacobian("conflicting", 3, seed=3)), torch.ones(3))
    assert set(method.stats()) == {"weight_0", "weight_1", "weight_2", "solver_iterations"}
    method.reset()
    assert method.stats() == {}


# --------------------------------------------------------------------------------------- UPGrad


def upgrad_reference(g: np.ndarray) -> np.ndarray:
    """``(1/T) sum_i Pi(g_i)`` with each projection onto ``{x : G x >= 0}`` solved over ``x`` by SLSQP (the rows
    of ``G`` normalised, which leaves the cone unchanged and helps the solver on badly scaled rows)."""
    t, dim = g.shape
    norms = np.linalg.norm(g, axis=1)
    rows = g[norms > 0] / norms[norms > 0, None]
    out = np.zeros(dim)
    for i in range(t):
        y = g[i] / t
        res = minimize(lambda x, y=y: 0.5 * np.sum((x - y) ** 2), y, jac=lambda x, y=y: x - y, method="SLSQP",
                       constraints=[{"type": "ineq", "fun": lambda x: rows @ x, "jac": lambda x: rows}],
                       options={"ftol": 1e-16, "maxiter": 1000})
        out += res.x
    return out


def upgrad_direction(g: np.ndarray, **hparams) -> tuple[np.ndarray, np.ndarray]:
    w = UPGrad(len(g), **hparams).gramian_weights(gram(g), torch.ones(len(g))).numpy()
    return w, w @ g


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_does_not_conflict_with_any_task(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=60 + num_tasks)
    trace = (g**2).sum()
    for reg_eps in (1e-4, 1e-8):
        w, d = upgrad_direction(g, reg_eps=reg_eps)
        assert np.all(w >= 1.0 / num_tasks - 1e-12)
        # KKT of the regularised QP: <g_j, d> >= -reg_eps trace(M) w_j
        assert np.all(g @ d >= -reg_eps * trace * w - 1e-10 * trace), (g @ d, reg_eps * trace * w)
    if kind in ("random", "conflicting", "collinear"):
        assert np.all(g @ d >= -1e-7 * trace)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_without_conflict_is_the_mean(kind, num_tasks):
    g = non_conflicting(kind, num_tasks, seed=num_tasks)
    w, d = upgrad_direction(g)
    np.testing.assert_allclose(w, np.full(num_tasks, 1.0 / num_tasks), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d, g.mean(axis=0), rtol=1e-10, atol=1e-14)
    w_sum, _ = upgrad_direction(g, update_scale="sum")
    np.testing.assert_allclose(w_sum, np.ones(num_tasks), rtol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_is_permutation_equivariant(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=70 + num_tasks)
    perm = np.random.default_rng(num_tasks).permutation(num_tasks)
    w, _ = upgrad_direction(g)
    w_perm, _ = upgrad_direction(g[perm])
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_is_the_mean_projection_onto_the_dual_cone(kind, num_tasks):
    g = jacobian(kind, num_tasks, dim=6, seed=80 + num_tasks)
    scale = np.linalg.norm(g, axis=1).max()
    # reg_eps I on the normalised Gramian is exact UPGrad on G augmented by sqrt(reg_eps trace(M)) I
    reg_eps = 1e-4
    aug = np.hstack([g, math.sqrt(reg_eps * (g**2).sum()) * np.eye(num_tasks)])
    ref = upgrad_reference(aug)
    w, d = upgrad_direction(g, reg_eps=reg_eps)
    np.testing.assert_allclose(d, ref[:6], atol=1e-7 * scale, rtol=0)
    np.testing.assert_allclose(w, ref[6:] / math.sqrt(reg_eps * (g**2).sum()), atol=1e-6, rtol=0)
    if kind != "badly_scaled":  # there reg_eps dominates the smallest rows whatever its value
        _, d = upgrad_direction(g, reg_eps=1e-14)
        np.testing.assert_allclose(d, upgrad_reference(g), atol=1e-8 * scale, rtol=0)


def test_upgrad_hand_example_and_normalisation():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # Pi(g_1/2) = (0.25, 0.25), Pi(g_2/2) = (0, 0.5)
    w = upgrad_weights(gram(g), reg_eps=1e-12).numpy()
    np.testing.assert_allclose(w, [1.0, 0.75], atol=1e-9)
    np.testing.assert_allclose(w @ g, [0.25, 0.75], atol=1e-9)
    # the trace normalisation makes the weights scale-free; below norm_eps the Gramian is zeroed: the mean
    np.testing.assert_allclose(upgrad_weights(gram(1e3 * g)).numpy(), upgrad_weights(gram(g)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(upgrad_weights(gram(1e-3 * g)).numpy(), [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(upgrad_weights(gram(1e-3 * g), norm_eps=0.0).numpy(), upgrad_weights(gram(g)).numpy(),
                               rtol=1e-12)


def test_upgrad_needs_quadprog_and_raises_on_solver_failure(monkeypatch):
    class Broken:
        @staticmethod
        def solve_qp(*args, **kwargs):
            raise ValueError("constraints are inconsistent, no solution")

    monkeypatch.setattr(upgrad, "require_quadprog", lambda: Broken)
    with pytest.raises(RuntimeError, match="UPGrad: quadprog failed on the QP of task 0"):
        UPGrad(2).gramian_weights(gram(np.eye(2)), torch.ones(2))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "quadprog", None)
    with pytest.raises(ImportError, match="pip install"):
        UPGrad(3)
    with pytest.raises(ImportError, match="quadprog"):
        create("upgrad", 3)


# --------------------------------------------------------------------------------------- all three


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", [*KINDS, *adversarial_jacobians()])
def test_aggregate_on_raw_jacobians(name, case):
    g = adversarial_jacobians()[case] if case in adversarial_jacobians() else jacobian(case, 3, seed=1)
    jac = torch.as_tensor(g, dtype=torch.float32)
    method = create(name, jac.shape[0])
    direction = method.aggregate(jac, torch.rand(jac.shape[0]) + 0.1)
    assert direction.dtype == torch.float32 and direction.shape == (jac.shape[1],)
    assert torch.all(torch.isfinite(direction))
    assert all(math.isfinite(v) for v in method.stats().values())


@pytest.mark.parametrize("name", METHODS)
def test_gramian_method_with_default_sources(name):
    method = create(name, 3)
    assert get(name).needs is Needs.GRAMIAN
    assert method.hparams()["head_weighting"] == "own" and method.hparams()["grad_source"] == "params"


def test_recommended_defaults():
    assert PCGrad(3).hparams() == {"eps": 1e-8, "include_self": False, "reduction": "sum",
                                 "grad_source": "params", "head_weighting": "own"}
    assert CAGrad(3).hparams()["c"] == 0.4 and CAGrad(3).hparams()["rescale"] == 1
    assert CAGrad(3).hparams()["update_scale"] == "native"
    assert UPGrad(3).hparams() == {"norm_eps": 1e-4, "reg_eps": 1e-4, "update_scale": "native",
                                   "grad_source": "params", "head_weighting": "own"}


@pytest.mark.parametrize(
    ("name", "hparams", "named"),
    [
        ("pcgrad", {"eps": -1.0}, "PCGrad: eps.*-1.0"),
        ("pcgrad", {"eps": float("nan")}, "PCGrad: eps.*nan"),
        ("pcgrad", {"include_self": 1}, "PCGrad: include_self.*1"),
        ("pcgrad", {"reduction": "avg"}, "PCGrad: reduction='avg'"),
        ("cagrad", {"c": -0.1}, "CAGrad: c.*-0.1"),
        ("cagrad", {"c": float("inf")}, "CAGrad: c.*inf"),
        ("cagrad", {"rescale": 3}, "CAGrad: rescale=3"),
        ("cagrad", {"rescale": True}, "CAGrad: rescale=True"),
        ("cagrad", {"update_scale": "libmtl"}, "CAGrad: update_scale='libmtl'"),
        ("cagrad", {"max_iter": 0}, "CAGrad: max_iter.*0"),
        ("cagrad", {"tol": 0.0}, "CAGrad: tol.*0.0"),
        ("upgrad", {"norm_eps": -1e-4}, "UPGrad: norm_eps.*-0.0001"),
        ("upgrad", {"reg_eps": 0.0}, "UPGrad: reg_eps.*0.0"),
        ("upgrad", {"reg_eps": "1e-4"}, "UPGrad: reg_eps.*'1e-4'"),
        ("upgrad", {"update_scale": "total"}, "UPGrad: update_scale='total'"),
        ("upgrad", {"grad_source": "rep"}, "grad_source='rep'"),
        ("pcgrad", {"head_weighting": "both"}, "head_weighting='both'"),
    ],
)
def test_bad_values_name_the_method_and_parameter(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


def test_the_three_methods_train_in_a_tiny_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, "[{name: pcgrad}, {name: cagrad}, {name: upgrad}]"),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    run_suite(suite)
    found = records(tmp_path)
    for name in METHODS:
        rec = found[f"tiny/synthetic_scenes/{name}/seed0"]
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2
        assert rec["method_hparams"] == create(name, 3).hparams()
        assert math.isfinite(rec["method_stats"]["weight_0"]["last"])
