"""Property tests of GradDrop, GradVac, Aligned-MTL, GradNorm and DB-MTL (docs/methods.md §10, 11, 14, 5, 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.config import load_suite
from benchmark.engine import Engine
from benchmark.methods import Needs, available, create, get
from benchmark.methods.aligned_mtl import AlignedMTL, aligned_mtl_basis, aligned_mtl_weights
from benchmark.methods.db_mtl import DBMTL, db_mtl_ema, db_mtl_weights
from benchmark.methods.graddrop import (
    GradDrop,
    graddrop_direction,
    graddrop_masks,
    graddrop_purity,
    graddrop_rep_direction,
)
from benchmark.methods.gradnorm import GradNorm, gradnorm_balance_loss, gradnorm_beta_grad, gradnorm_weights
from benchmark.methods.gradvac import GradVac, gradvac_coefficients
from benchmark.methods.pcgrad import pcgrad_coefficients
from benchmark.runner import run_suite
from tests.method_properties import KINDS, adversarial_jacobians, jacobian
from tests.test_runner import records, write_suite

METHODS = ("graddrop", "gradvac", "aligned_mtl", "gradnorm", "db_mtl")
TASK_COUNTS = (2, 3, 5)


def gram(g: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(g @ g.T)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------------------- GradDrop


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_graddrop_keeps_agreeing_coordinates_exactly_and_one_sign_elsewhere(kind, num_tasks):
    g = torch.as_tensor(jacobian(kind, num_tasks, dim=64, seed=num_tasks))
    g[:, :8] = g[:, :8].abs() * torch.tensor([1.0, -1.0]).repeat(4)  # columns 0-7 agree in sign
    torch.manual_seed(num_tasks)
    method = GradDrop(num_tasks)
    for _ in range(5):
        d = method.aggregate(g)
        pos, neg = g.clamp(min=0).sum(dim=0), g.clamp(max=0).sum(dim=0)
        agree = (g >= 0).all(dim=0) | (g <= 0).all(dim=0)
        assert agree[:8].all()
        assert torch.equal(d[agree], g.sum(dim=0)[agree])  # nothing is dropped where all signs agree
        assert torch.all((d == pos) | (d == neg))  # the survivors of a column share a sign (leak 0)
    if kind == "random":  # both signs survive somewhere among the conflicting columns
        assert ((d == pos) & ~agree).any() and ((d == neg) & ~agree).any()
    torch.testing.assert_close(GradDrop(num_tasks, leak=1.0).aggregate(g), g.sum(dim=0), rtol=1e-15, atol=0)


def test_graddrop_purity_and_keep_probability_hand_example():
    g = torch.tensor([[3.0, 2.0, 0.0, -1.0], [-1.0, -1.0, 0.0, -2.0], [0.0, -1.0, 0.0, 0.0]])
    # column 0: P = (1 + 2/4)/2 = 0.75; column 1: (1 + 0/4)/2 = 0.5; all-zero column: 1/2; all negative: 0
    torch.testing.assert_close(graddrop_purity(g), torch.tensor([0.75, 0.5, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(graddrop_purity(g, eps=1.0), 0.5 * (1 + torch.tensor([2 / 5, 0.0, 0.0, -3 / 4],
                                                                                   dtype=torch.float64)))
    below = torch.tensor([0.7499, 0.4999, 0.3, 0.0], dtype=torch.float64)
    above = torch.tensor([0.75, 0.5, 0.9, 0.9999], dtype=torch.float64)
    assert graddrop_masks(g, below).tolist() == [[True, True, False, True], [False, False, False, True],
                                                 [False, False, False, False]]
    assert graddrop_masks(g, above).tolist() == [[False, False, False, True], [True, True, False, True],
                                                 [False, True, False, False]]
    assert graddrop_direction(g, below).tolist() == [3.0, 2.0, 0.0, -3.0]
    assert graddrop_direction(g, above).tolist() == [-1.0, -2.0, 0.0, -3.0]
    # leak: sum_i (leak + (1 - leak) M_i) g_i
    assert graddrop_direction(g, above, leak=0.25).tolist() == [0.25 * 3 - 1, 0.25 * 2 - 2, 0.0, -3.0]
    # the positive side of column 0 survives with probability P = 0.75
    column = torch.tensor([[3.0], [-1.0]]).repeat(1, 40000)
    torch.manual_seed(0)
    kept = (GradDrop(2).aggregate(column) > 0).double().mean()
    assert float(kept) == pytest.approx(0.75, abs=0.01)


def test_graddrop_paper_form_uses_sign_of_activation_and_batch_sum():
    per_sample = torch.tensor([[[1.0, 2.0], [1.0, -1.0]], [[-3.0, 1.0], [0.5, 1.0]]])  # [T=2, B=2, F=2]
    activation = torch.tensor([[2.0, 1.0], [-1.0, 0.0]])
    # feature 0: signed sums 1 - 1 = 0 and -3 - 0.5 = -3.5 -> P = 0: keep the negative task (task 1) only
    # feature 1: signed sums 2 and 1 (A = 0 for sample 1) -> P = 1: keep both (both positive)
    d = graddrop_rep_direction(per_sample, activation, torch.tensor([0.5, 0.999]))
    torch.testing.assert_close(d, torch.tensor([[-3.0, 3.0], [0.5, 0.0]]))
    torch.testing.assert_close(graddrop_rep_direction(per_sample, activation, torch.rand(2), leak=1.0),
                               per_sample.sum(dim=0))


def test_graddrop_draws_from_its_own_saved_rng():
    g = torch.as_tensor(jacobian("conflicting", 3, dim=200, seed=1))
    torch.manual_seed(0)
    method = GradDrop(3)
    assert method.state_dict()["_extra_state"] == {"rng": None}
    first = method.aggregate(g)
    global_state = torch.get_rng_state()
    state = method.state_dict()
    expected = [method.aggregate(g) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), global_state)
    assert not torch.equal(expected[0], expected[1])  # a fresh draw every step
    resumed = GradDrop(3)
    resumed.load_state_dict(state)
    torch.manual_seed(99)
    assert all(torch.equal(resumed.aggregate(g), e) for e in expected)
    torch.manual_seed(0)
    assert torch.equal(GradDrop(3).aggregate(g), first)
    torch.manual_seed(1)
    assert not torch.equal(GradDrop(3).aggregate(g), first)
    assert 0 < method.stats()["sign_conflict_fraction"] <= 1
    method.reset()
    assert method.state_dict()["_extra_state"] == {"rng": None} and method.stats() == {}


# --------------------------------------------------------------------------------------- GradVac


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
    first.reset()
    assert first.targets.abs().max() == 0 and first.state_dict()["_extra_state"] == {"rng": None}


# --------------------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_aligned_gradients_have_equal_singular_values(kind, num_tasks, scale_mode):
    g = jacobian(kind, num_tasks, dim=16, seed=60 + num_tasks)
    m = gram(g)
    basis, kept = aligned_mtl_basis(m, scale_mode)
    b, lam = basis.numpy(), kept.numpy()
    vals, vecs = np.linalg.eigh(m.numpy())
    on = vals > vals.max() * num_tasks * np.finfo(np.float32).eps  # the official rank threshold
    rank = int(on.sum())
    assert len(lam) == rank and np.all(np.diff(lam) <= 0)
    assert rank == np.linalg.matrix_rank(g) or kind == "badly_scaled"  # there the 1e-8 task falls below it
    np.testing.assert_allclose(lam, vals[on][::-1], rtol=0, atol=1e-14 * vals.max())
    sigma_sq = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}[scale_mode]
    aligned = b @ g
    singular = np.linalg.svd(aligned, compute_uv=False)
    np.testing.assert_allclose(singular[:rank], math.sqrt(sigma_sq), rtol=1e-6)
    assert np.all(singular[rank:] <= 1e-6 * math.sqrt(sigma_sq))
    # B M B^T = sigma^2 V_R V_R^T, the projector onto the kept eigenvectors
    projector = vecs[:, on] @ vecs[:, on].T
    np.testing.assert_allclose(b @ m.numpy() @ b.T, sigma_sq * projector, atol=1e-6 * sigma_sq)
    if rank == num_tasks and scale_mode == "min":  # full rank: the aligned Gramian is lambda_min I
        np.testing.assert_allclose(aligned @ aligned.T, lam[-1] * np.eye(num_tasks), atol=1e-6 * lam[-1])
    w = AlignedMTL(num_tasks, scale_mode=scale_mode).gramian_weights(m, torch.ones(num_tasks)).numpy()
    np.testing.assert_allclose(w @ g, aligned.sum(axis=0), rtol=1e-12, atol=1e-12 * np.abs(aligned).max())


def test_aligned_mtl_hand_examples():
    torch.testing.assert_close(aligned_mtl_weights(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))),
                               torch.tensor([0.5, 1.0], dtype=torch.float64))
    s = 1 / math.sqrt(3)  # M = [[2, 1], [1, 2]]: eigenvalues 3 (1, 1) and 1 (1, -1); B 1 = (1, 1)/sqrt(3)
    torch.testing.assert_close(aligned_mtl_weights(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)),
                               torch.tensor([s, s], dtype=torch.float64))
    m = torch.diag(torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64))
    base = torch.tensor([1 / 3, 1 / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(aligned_mtl_weights(m, "min"), base)
    torch.testing.assert_close(aligned_mtl_weights(m, "median"), 2 * base)
    torch.testing.assert_close(aligned_mtl_weights(m, "rmse"), math.sqrt(14 / 3) * base)
    # an even rank takes the lower median, as the official torch.median
    torch.testing.assert_close(aligned_mtl_weights(torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)),
                                                   "median"), torch.tensor([0.5, 1.0], dtype=torch.float64))
    # rank 1: B = v v^T (sigma^2 = lambda), a zero Gramian: B = 0
    g = np.array([[1.0, 2.0], [2.0, 4.0]])
    basis, kept = aligned_mtl_basis(gram(g))
    assert len(kept) == 1
    torch.testing.assert_close(basis, torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64) / 5)
    assert aligned_mtl_weights(torch.zeros(3, 3, dtype=torch.float64)).abs().max() == 0
    method = AlignedMTL(3, update_scale="mean")
    torch.testing.assert_close(method.gramian_weights(m, torch.ones(3)), base / 3)
    assert method.stats()["rank"] == 3.0 and method.stats()["gramian_condition"] == pytest.approx(9.0)


# --------------------------------------------------------------------------------------- GradNorm


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
    first.reset()
    assert first.beta.tolist() == [1.0] * 3 and not first.started and first.beta.grad is None


# --------------------------------------------------------------------------------------- DB-MTL


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
    first.reset()
    assert first.grad_buffer.numel() == 0 and int(first.steps) == 0
    torch.testing.assert_close(first.aggregate(jacs[0]), DBMTL(3).aggregate(jacs[0]))


# --------------------------------------------------------------------------------------- all five


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", [*KINDS, *adversarial_jacobians()])
def test_aggregate_on_raw_jacobians(name, case):
    g = adversarial_jacobians()[case] if case in adversarial_jacobians() else jacobian(case, 3, seed=1)
    jac = torch.as_tensor(g, dtype=torch.float32)
    hparams = {"initial_loss": "first_step"} if name == "gradnorm" else {}
    method = create(name, jac.shape[0], **hparams)
    for _ in range(2):
        direction = method.aggregate(jac, torch.rand(jac.shape[0]) + 0.1)
        assert direction.dtype == torch.float32 and direction.shape == (jac.shape[1],)
        assert torch.all(torch.isfinite(direction))
    assert all(math.isfinite(v) for v in method.stats().values())


@pytest.mark.parametrize("name", METHODS)
def test_registered_with_its_needs(name):
    assert name in available()
    expected = {"graddrop": Needs.JACOBIAN, "db_mtl": Needs.JACOBIAN}.get(name, Needs.GRAMIAN)
    assert get(name).needs is expected


def test_recommended_defaults():
    assert GradDrop(3).hparams() == {"leak": 0.0, "eps": 0.0, "grad_source": "params"}
    assert GradVac(3).hparams() == {"beta": 0.5, "eps": 1e-8, "grad_source": "params", "head_weighting": "own"}
    assert AlignedMTL(3).hparams() == {"scale_mode": "min", "update_scale": "native", "grad_source": "params",
                                       "head_weighting": "own"}
    assert GradNorm(3).hparams() == {"alpha": 1.5, "initial_loss": "epoch0_mean", "lr": None,
                                     "grad_source": "params", "head_weighting": "own"}
    assert DBMTL(3).hparams() == {"beta": 0.9, "beta_sigma": 0.0, "eps": 1e-8}


@pytest.mark.parametrize(
    ("name", "hparams", "named"),
    [
        ("graddrop", {"leak": 1.5}, "GradDrop: leak.*1.5"),
        ("graddrop", {"eps": -1e-7}, "GradDrop: eps.*-1e-07"),
        ("graddrop", {"leak": "0"}, "GradDrop: leak.*'0'"),
        ("graddrop", {"grad_source": "rep_batchsum"}, "GradDrop: grad_source='rep_batchsum'"),
        ("gradvac", {"beta": -0.1}, "GradVac: beta.*-0.1"),
        ("gradvac", {"eps": float("nan")}, "GradVac: eps.*nan"),
        ("aligned_mtl", {"scale_mode": "mean"}, "AlignedMTL: scale_mode='mean'"),
        ("aligned_mtl", {"update_scale": "T"}, "AlignedMTL: update_scale='T'"),
        ("gradnorm", {"alpha": -1.0}, "GradNorm: alpha.*-1.0"),
        ("gradnorm", {"initial_loss": "epoch1"}, "GradNorm: initial_loss='epoch1'"),
        ("gradnorm", {"lr": 0.0}, "GradNorm: lr.*0.0"),
        ("db_mtl", {"beta": 1.0}, "DBMTL: beta.*1.0"),
        ("db_mtl", {"beta_sigma": -0.5}, "DBMTL: beta_sigma.*-0.5"),
        ("db_mtl", {"eps": True}, "DBMTL: eps.*True"),
    ],
)
def test_bad_values_name_the_method_field_and_value(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


def test_the_five_methods_train_in_a_tiny_suite(tmp_path):
    methods = ("[{name: graddrop}, {name: gradvac}, {name: aligned_mtl}, "
               "{name: gradnorm, hparams: {initial_loss: first_step}}, {name: db_mtl}]")
    suite = load_suite(write_suite(tmp_path, methods),
                       ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs", "1"])
    run_suite(suite)
    found = {r["method_label"]: r for r in records(tmp_path).values()}
    assert set(found) == set(METHODS)
    for name, rec in found.items():
        assert rec["status"] == "finished" and rec["epochs"][-1]["step"] == 2, name
        stats = rec["method_stats"]
        assert all(math.isfinite(v["last"]) for v in stats.values()), name
    gradnorm = found["gradnorm"]["method_stats"]
    weights = [gradnorm[f"weight_{i}"]["last"] for i in range(3)]
    assert sum(weights) == pytest.approx(3.0, rel=1e-6) and max(abs(w - 1) for w in weights) > 1e-6  # beta trained
    assert "sign_conflict_fraction" in found["graddrop"]["method_stats"]
    assert found["aligned_mtl"]["method_stats"]["rank"]["last"] >= 1
