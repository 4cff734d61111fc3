"""Property tests of the seed methods: MGDA, MGDA-UB, IMTL-G, IMTL-L, IMTL-H and the min-norm solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import Needs, available, create, get, min_norm
from benchmark.methods.imtl_g import IMTLG, imtl_g_weights
from benchmark.methods.mgda import MGDA
from benchmark.methods.min_norm import (
    ITERATIVE_SOLVERS,
    SOLVERS,
    min_norm_frank_wolfe,
    min_norm_pgd,
    min_norm_qp,
    project_simplex,
    two_point,
)
from tests.method_properties import (
    KINDS,
    adversarial_jacobians,
    assert_common_descent,
    assert_equal_projections,
    assert_min_norm_kkt,
    assert_on_simplex,
    brute_force_min_norm,
    jacobian,
    slsqp_min_norm,
)

SEED_METHODS = ("mgda", "mgda_ub", "imtl_g", "imtl_l", "imtl_h")
TASK_COUNTS = (2, 3, 5)
# Accuracy relative to max_t M_tt: the official PGD reaches ~3e-6, Frank-Wolfe at 250 iterations ~2e-3.
SOLVER_TOL = {"pgd": 1e-4, "frank_wolfe": 1e-2, "qp": 1e-9}


def gram(g: np.ndarray) -> np.ndarray:
    return g @ g.T


def weights(method, g: np.ndarray, losses=None) -> np.ndarray:
    m = torch.as_tensor(gram(g))
    losses = torch.ones(g.shape[0], dtype=torch.float64) if losses is None else torch.as_tensor(losses)
    return method.gramian_weights(m, losses).numpy()


# --------------------------------------------------------------------------------------- min-norm solvers


@pytest.mark.parametrize(
    ("x1", "x2", "gamma"),
    [
        ((1.0, 0.0), (0.0, 1.0), 0.5),
        ((2.0, 0.0), (0.0, 1.0), 0.2),
        ((3.0, 0.0), (-1.0, 0.0), 0.25),
        ((1.0, 0.0), (1.0, 1.0), 1.0),
        ((1.0, 1.0), (1.0, 0.0), 0.0),
        ((1.0, 2.0), (1.0, 2.0), 1.0),
        ((0.0, 0.0), (0.0, 0.0), 1.0),
    ],
)
def test_two_point_hand_cases(x1, x2, gamma):
    x1, x2 = np.array(x1), np.array(x2)
    got, cost = two_point(x1 @ x1, x1 @ x2, x2 @ x2)
    assert got == pytest.approx(gamma, abs=1e-12)
    point = got * x1 + (1 - got) * x2
    assert cost == pytest.approx(point @ point, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_two_point_is_the_clipped_closed_form_and_the_grid_minimum(seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((2, 4)) * rng.uniform(0.1, 3.0, size=(2, 1))
    a, b, c = x1 @ x1, x1 @ x2, x2 @ x2
    gamma, cost = two_point(a, b, c)
    assert gamma == pytest.approx(min(max((c - b) / (a + c - 2 * b), 0.0), 1.0), abs=1e-12)
    grid = np.linspace(0.0, 1.0, 100_001)
    values = np.sum((grid[:, None] * x1 + (1 - grid[:, None]) * x2) ** 2, axis=1)
    assert cost == pytest.approx(values.min(), rel=1e-8, abs=1e-12)
    assert abs(gamma - grid[values.argmin()]) <= 2e-5


def test_two_point_official_clip_and_flat_guard():
    assert two_point(1.0, 2.0, 5.0, official_clip=True)[0] == 0.999
    assert two_point(5.0, 2.0, 1.0, official_clip=True)[0] == 0.001
    gamma, cost = two_point(1.0, 1.0 - 1e-15, 1.0 + 1e-15)
    assert 0.0 <= gamma <= 1.0 and cost == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "expected"),
    [([0.5, 0.5, 0.5], [1 / 3] * 3), ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0]), ([1.0, 1.0, -5.0], [0.5, 0.5, 0.0])],
)
def test_project_simplex_hand_cases(y, expected):
    np.testing.assert_allclose(project_simplex(y), expected, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_project_simplex_is_the_euclidean_projection(seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(6) * 3
    x = project_simplex(y)
    assert_on_simplex(x)
    others = rng.dirichlet(np.ones(6), size=200)
    assert np.all((others - x) @ (y - x) <= 1e-12)
    np.testing.assert_allclose(project_simplex(x), x, atol=1e-12)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_min_norm_kkt_and_brute_force(solver, kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=num_tasks)
    m = gram(g)
    alpha, _ = SOLVERS[solver](m)
    tol = SOLVER_TOL[solver]
    assert_on_simplex(alpha)
    assert_min_norm_kkt(m, alpha, tol)
    d = alpha @ g
    scale = m.diagonal().max()
    assert np.all(g @ d >= d @ d - tol * scale)
    d_ref = brute_force_min_norm(m) @ g
    assert np.linalg.norm(d - d_ref) <= tol * math.sqrt(scale)


@pytest.mark.parametrize("kind", ["random", "conflicting"])
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_pgd_gives_a_common_descent_direction(kind, num_tasks):
    g = jacobian(kind, num_tasks, seed=10 + num_tasks)
    alpha, _ = min_norm_pgd(gram(g))
    assert_common_descent(g, alpha @ g, rtol=1e-3)


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_brute_force_reference_agrees_with_slsqp(num_tasks):
    m = gram(jacobian("conflicting", num_tasks, seed=7))
    exact, slsqp = brute_force_min_norm(m), slsqp_min_norm(m)
    assert exact @ m @ exact <= slsqp @ m @ slsqp + 1e-12
    assert exact @ m @ exact == pytest.approx(slsqp @ m @ slsqp, rel=1e-6)


def test_grid_search_confirms_three_task_solution():
    g = jacobian("conflicting", 3, seed=3)
    m = gram(g)
    step = np.linspace(0.0, 1.0, 801)
    a1, a2 = np.meshgrid(step, step)
    grid = np.stack([a1.ravel(), a2.ravel(), 1 - a1.ravel() - a2.ravel()], axis=1)
    grid = grid[grid[:, 2] >= 0]
    best = np.einsum("ni,ij,nj->n", grid, m, grid).min()
    for solver in SOLVERS.values():
        alpha, _ = solver(m)
        assert best - 1e-3 * m.diagonal().max() <= alpha @ m @ alpha <= best + 1e-12


@pytest.mark.parametrize("solver", ITERATIVE_SOLVERS)
def test_iteration_cap_is_honoured(solver, monkeypatch):
    m = gram(jacobian("conflicting", 5, seed=5))
    _, uncapped = SOLVERS[solver](m)
    assert uncapped > 3
    line_searches = []
    monkeypatch.setattr(min_norm, "two_point", lambda *a, **k: line_searches.append(1) or two_point(*a, **k))
    _, capped = SOLVERS[solver](m, max_iter=3)
    assert capped == 3
    assert len(line_searches) == 3 + 5 * 4 // 2
    monkeypatch.undo()
    _, never_converges = SOLVERS[solver](m, max_iter=7, tol=0.0)
    assert never_converges == 7
    mgda = MGDA(5, solver=solver, max_iter=3)
    mgda.gramian_weights(torch.as_tensor(m), torch.ones(5, dtype=torch.float64))
    assert mgda.stats()["solver_iterations"] <= 3


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_and_two_tasks(solver):
    alpha, it = SOLVERS[solver](np.array([[4.0]]))
    assert alpha.tolist() == [1.0] and it == 0
    alpha, it = SOLVERS[solver](np.array([[4.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(alpha, [0.2, 0.8])
    assert it == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_solution_invariant_to_global_scale(solver):
    m = gram(jacobian("random", 5, seed=1))
    alpha, _ = SOLVERS[solver](m)
    for c in (1e-12, 1e12):
        np.testing.assert_allclose(SOLVERS[solver](c * m)[0], alpha, atol=1e-10)


def test_solvers_reject_non_finite_and_non_square():
    with pytest.raises(ValueError, match="non-finite"):
        min_norm_pgd(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        min_norm_frank_wolfe(np.ones((2, 3)))


# --------------------------------------------------------------------------------------- MGDA / MGDA-UB


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


def test_mgda_stats_and_reset():
    method = MGDA(3)
    assert method.stats() == {}
    weights(method, jacobian("conflicting", 3, seed=3))
    stats = method.stats()
    assert set(stats) == {"weight_0", "weight_1", "weight_2", "solver_iterations"}
    assert sum(stats[f"weight_{t}"] for t in range(3)) == pytest.approx(1.0)
    method.reset()
    assert method.stats() == {}


def test_mgda_ub_defaults_to_the_representation():
    assert create("mgda_ub", 3).grad_source == "rep_full"
    assert create("mgda", 3).grad_source == "params"
    assert create("mgda_ub", 3, grad_source="rep_batchsum").hparams()["grad_source"] == "rep_batchsum"


# --------------------------------------------------------------------------------------- IMTL-G


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


# --------------------------------------------------------------------------------------- IMTL-L / IMTL-H


def test_imtl_l_gradient_of_the_scales():
    method = create("imtl_l", 3)
    losses = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([0.3, -0.1, 0.0]))
    method.transform_losses(losses).sum().backward()
    s = method.scale.log_scale.detach().double()
    np.testing.assert_allclose(method.scale.log_scale.grad.double(), torch.exp(s) * losses - 1, atol=1e-6)

    method.scale.log_scale.grad = None
    with torch.no_grad():
        method.scale.log_scale.copy_(-torch.log(losses))
    method.transform_losses(losses).sum().backward()
    assert method.scale.log_scale.grad.abs().max() < 1e-6


def test_imtl_l_optimiser_drives_scaled_losses_to_one():
    method = create("imtl_l", 3)
    losses = torch.tensor([0.1, 1.0, 10.0])
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        (method.loss_weights(losses) * method.transform_losses(losses)).sum().backward()
        opt.step()
    np.testing.assert_allclose((method.scale.factors() * losses).numpy(), 1.0, atol=1e-4)
    assert method.stats()["scale_0"] == pytest.approx(10.0, rel=1e-3)
    method.reset()
    assert method.scale.log_scale.abs().max() == 0.0
    assert method.stats() == {"scale_0": 1.0, "scale_1": 1.0, "scale_2": 1.0}


def test_imtl_l_contract():
    method = create("imtl_l", 2)
    assert method.needs is Needs.LOSSES and method.hparams() == {}
    assert "scale.log_scale" in method.state_dict()
    assert [p.shape for p in method.parameters()] == [torch.Size([2])]
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([math.log(2.0), 0.0]))
    jac = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(method.aggregate(jac).numpy(), [2.0, 1.0], atol=1e-6)
    assert method.loss_weights(torch.ones(2)).tolist() == [1.0, 1.0]


def test_imtl_h_is_imtl_g_on_the_scaled_losses_gradients():
    torch.manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(3, 6, dtype=torch.float64)
    raw = torch.stack([((theta - t) ** 2).sum() * w for t, w in zip(targets, (0.1, 1.0, 10.0), strict=True)])
    method = create("imtl_h", 3)
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
    scaled = method.transform_losses(raw)
    jac_raw = torch.stack([torch.autograd.grad(x, theta, retain_graph=True)[0] for x in raw])
    jac_scaled = torch.stack([torch.autograd.grad(x, theta, retain_graph=True)[0] for x in scaled])
    factors = method.scale.factors().double()[:, None]
    torch.testing.assert_close(jac_scaled, factors * jac_raw)

    alpha = method.gramian_weights(jac_scaled @ jac_scaled.T, raw.detach())
    torch.testing.assert_close(alpha, imtl_g_weights((factors * jac_raw) @ (factors * jac_raw).T))
    torch.testing.assert_close(method.aggregate(jac_raw), IMTLG(3).aggregate(factors * jac_raw))
    d_h, d_g = method.aggregate(jac_raw), IMTLG(3).aggregate(jac_raw)
    assert abs(d_h @ d_g / (d_h.norm() * d_g.norm())) == pytest.approx(1.0, abs=1e-12)

    scaled.sum().backward()
    assert method.scale.log_scale.grad is not None
    method.reset()
    assert method.scale.log_scale.abs().max() == 0.0 and method.last_weights is None


# --------------------------------------------------------------------------------------- every seed method


@pytest.mark.parametrize("name", SEED_METHODS)
@pytest.mark.parametrize("case", [*KINDS, *adversarial_jacobians()])
def test_aggregate_on_raw_jacobians(name, case):
    g = adversarial_jacobians()[case] if case in adversarial_jacobians() else jacobian(case, 3, seed=1)
    jac = torch.as_tensor(g, dtype=torch.float32)
    method = create(name, jac.shape[0])
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.linspace(-1.0, 1.0, p.numel()))
    direction = method.aggregate(jac, torch.rand(jac.shape[0]) + 0.1)
    assert direction.dtype == torch.float32 and direction.shape == (jac.shape[1],)
    assert torch.all(torch.isfinite(direction))
    assert all(math.isfinite(v) for v in method.stats().values())


def test_registry():
    assert set(SEED_METHODS) <= set(available())
    assert {get(n).needs for n in SEED_METHODS} == {Needs.GRAMIAN, Needs.LOSSES}
    assert create("imtl_h", 2).needs is Needs.GRAMIAN
    with pytest.raises(TypeError, match="'normalisation'"):
        create("mgda", 3, normalisation="l2")
    with pytest.raises(TypeError, match="grad_source"):
        create("imtl_l", 3, grad_source="rep_full")
    with pytest.raises(KeyError, match="did you mean 'mgda'"):
        get("mgdaa")
    with pytest.raises(KeyError, match="imtl_g"):
        get("imtl-g")


@pytest.mark.parametrize(
    ("hparams", "named"),
    [
        ({"normalization": "L2"}, "normalization='L2'"),
        ({"solver": "fw"}, "solver='fw'"),
        ({"max_iter": 0}, "max_iter.*0"),
        ({"max_iter": 2.5}, "max_iter.*2.5"),
        ({"tol": -1e-5}, "tol.*-1e-05"),
        ({"tol": float("nan")}, "tol.*nan"),
        ({"official_two_point_clip": "yes"}, "official_two_point_clip.*'yes'"),
        ({"grad_source": "rep"}, "grad_source='rep'"),
        ({"head_weighting": "both"}, "head_weighting='both'"),
    ],
)
@pytest.mark.parametrize("name", ["mgda", "mgda_ub"])
def test_bad_values_name_the_parameter(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("num_tasks", [3, 5])
def test_qp_solver_meets_kkt_where_pgd_stops_early(seed, num_tasks):
    """Badly scaled Gramians (row norms 1e-4..1e2): the exact QP gives a common descent direction every time."""
    g = jacobian("badly_scaled", num_tasks, seed=100 + seed)
    m = gram(g)
    alpha, _ = min_norm_qp(m)
    assert_on_simplex(alpha)
    assert_min_norm_kkt(m, alpha, 1e-9)
    d = alpha @ g
    assert np.all(g @ d >= d @ d * (1 - 1e-6) - 1e-12 * m.diagonal().max())
    best = brute_force_min_norm(m)
    assert alpha @ m @ alpha <= best @ m @ best * (1 + 1e-9) + 1e-15
