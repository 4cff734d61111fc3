"""Property tests of the loss-weighting methods: SI, UW, DWA, RLW and FAMO (docs/methods.md §2, 3, 4, 6, 15)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.config import load_suite
from benchmark.engine import Engine
from benchmark.methods import Needs, available, create
from benchmark.methods.dwa import DWA, dwa_weights
from benchmark.methods.famo import FAMO, famo_logit_grad, famo_weights
from benchmark.methods.rlw import RLW, rlw_weights
from benchmark.methods.si import SI, si_weights
from benchmark.methods.uw import UW, uw_loss
from benchmark.module import ModuleConfig, MTOModule
from benchmark.optim import OptimConfig
from benchmark.runner import run_suite
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL
from tests.test_runner import records, write_suite

WEIGHTING_METHODS = ("si", "uw", "dwa", "rlw", "famo")


def toy_losses(w: torch.Tensor, scales=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Three positive, differently shaped losses of a shared parameter ``w`` [4]."""
    a = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.3, 0.1, -1.0, 2.0], [-0.5, 1.5, 0.2, 0.7]], dtype=w.dtype)
    b = torch.tensor([0.2, -0.4, 1.0], dtype=w.dtype)
    losses = (a @ w - b).pow(2) + torch.tensor([0.1, 0.3, 0.05], dtype=w.dtype) + w.pow(2).sum() * 0.01
    return losses * torch.tensor(scales, dtype=w.dtype)


def engine_grad(method, scales=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """The shared gradient the real engine writes for ``method`` on the toy problem."""
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64))
    Engine(method, [w], []).step(method.transform_losses(toy_losses(w, scales)))
    return w.grad.clone()


# --------------------------------------------------------------------------------------- SI


def test_si_gradient_is_invariant_to_loss_scale():
    reference = engine_grad(SI(3))
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64))
    toy_losses(w).log().sum().backward()
    torch.testing.assert_close(reference, w.grad)
    for scales in ((7.3, 1.0, 1.0), (1.0, 1e-3, 40.0), (1e4, 1e4, 1e-4)):
        torch.testing.assert_close(engine_grad(SI(3), scales), reference)
        assert not torch.allclose(engine_grad(create("ew", 3), scales), engine_grad(create("ew", 3)))


def test_si_weights_and_aggregate():
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(si_weights(losses), torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(SI(3).aggregate(jac, losses), (jac / losses[:, None]).sum(dim=0))
    method = SI(3)
    method.loss_weights(losses)
    assert method.stats() == {"weight_0": 2.0, "weight_1": 0.5, "weight_2": 0.25}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_si_rejects_non_positive_losses(bad):
    with pytest.raises(ValueError, match=r"SI: .*> 0.*tasks \[1\]"):
        SI(3).loss_weights(torch.tensor([1.0, bad, 2.0]))
    with pytest.raises(ValueError, match="SI"):
        SI(3).aggregate(torch.ones(3, 2), torch.tensor([1.0, 2.0, bad]))


# --------------------------------------------------------------------------------------- UW


def test_uw_gradient_in_s_and_its_fixed_point():
    gen = torch.Generator().manual_seed(1)
    method = UW(4)
    losses = torch.rand(4, generator=gen, dtype=torch.float64) * 3 + 0.1
    with torch.no_grad():
        method.log_var.copy_(torch.randn(4, generator=gen))
    s = method.log_var.detach().double()
    (grad,) = torch.autograd.grad(method.transform_losses(losses).sum(), method.log_var)
    torch.testing.assert_close(grad.double(), 0.5 * (1 - torch.exp(-s) * losses), rtol=1e-6, atol=1e-7)

    with torch.no_grad():
        method.log_var.copy_(losses.log())
    raw = losses.clone().requires_grad_()
    total = (method.loss_weights(raw.detach()) * method.transform_losses(raw)).sum()
    grad_s, grad_l = torch.autograd.grad(total, [method.log_var, raw])
    assert grad_s.abs().max() < 1e-6
    torch.testing.assert_close(grad_l, 1 / (2 * losses), rtol=1e-6, atol=0)
    torch.testing.assert_close(method.factors().double(), 1 / (2 * losses), rtol=1e-6, atol=0)
    assert method.stats()["scale_0"] == pytest.approx(1 / (2 * float(losses[0])), rel=1e-6)


def test_uw_loss_formula():
    losses, s = torch.tensor([2.0, 0.5]), torch.tensor([0.0, -1.0])
    torch.testing.assert_close(uw_loss(losses, s), torch.tensor([1.0, 0.25 * math.e - 0.5]))


@pytest.mark.parametrize(("hparams", "init", "lr"), [({}, 0.0, 0.025), ({"init": -0.5, "lr": None}, -0.5, None)])
def test_uw_init_options_and_parameter_group(hparams, init, lr):
    method = create("uw", 2, **hparams)
    assert method.log_var.tolist() == [init, init] and method.param_lr == lr
    assert method.hparams() == {"init": init, "lr": lr}
    with torch.no_grad():
        method.log_var.add_(3.0)
    method.reset()
    assert method.log_var.tolist() == [init, init]
    tasks = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth")]
    module = MTOModule(SegNetMTL({"semseg": 3, "depth": 1}, width=4, levels=2), tasks, method,
                       ModuleConfig(OptimConfig(lr=1e-3, weight_decay=1e-4)))
    model_group, method_group = module.configure_optimizers().param_groups
    assert model_group["lr"] == 1e-3 and model_group["weight_decay"] == 1e-4
    assert method_group["params"] == [method.log_var] and method_group["weight_decay"] == 0.0
    assert method_group["lr"] == (1e-3 if lr is None else lr)


# --------------------------------------------------------------------------------------- DWA


@pytest.mark.parametrize("num_tasks", [2, 3, 7])
def test_dwa_weights_properties(num_tasks):
    gen = torch.Generator().manual_seed(num_tasks)
    prev, prevprev = torch.rand(num_tasks, generator=gen) + 0.1, torch.rand(num_tasks, generator=gen) + 0.1
    w = dwa_weights(prev, prevprev, 2.0)
    assert w.sum() == pytest.approx(num_tasks) and torch.all(w > 0)
    assert torch.allclose(dwa_weights(0.7 * prevprev, prevprev, 2.0), torch.ones(num_tasks))
    assert torch.allclose(dwa_weights(prev, prevprev, 1e9), torch.ones(num_tasks), atol=1e-6)
    assert not torch.allclose(w, torch.ones(num_tasks), atol=1e-3)
    # the task whose loss decreased least gets the largest weight
    assert int(w.argmax()) == int((prev / prevprev).argmax())


def test_dwa_two_task_hand_case():
    w = dwa_weights(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), 2.0)
    e1, e2 = math.exp(0.5 / 2), math.exp(1.0 / 2)
    torch.testing.assert_close(w, torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]))


def test_dwa_epoch_mode_uses_epoch_means_and_starts_at_one():
    method = DWA(2)
    epochs = [[[4.0, 2.0], [2.0, 2.0]], [[1.5, 2.0], [1.5, 2.0]], [[1.0, 1.0], [2.0, 3.0]], [[1.0, 1.0]]]
    seen = []
    for batches in epochs:
        seen.append([method.loss_weights(torch.tensor(b)).tolist() for b in batches])
        method.on_train_epoch_end()
    assert seen[0] == [[1.0, 1.0]] * 2 and seen[1] == [[1.0, 1.0]] * 2
    # epoch 2: r = mean(epoch 1) / mean(epoch 0) = [1.5 / 3, 2 / 2]
    expected2 = dwa_weights(torch.tensor([0.5, 1.0]), torch.ones(2), 2.0).tolist()
    assert seen[2] == [pytest.approx(expected2)] * 2
    # epoch 3: r = [1.5 / 1.5, 2 / 2] -> equal ratios
    assert seen[3] == [pytest.approx([1.0, 1.0])]
    assert method.on_train_epoch_end() is None and method.epochs_seen == 4
    method.reset()
    assert method.loss_weights(torch.tensor([1.0, 1.0])).tolist() == [1.0, 1.0] and method.epochs_seen == 0


def test_dwa_window_mode_hand_history():
    window, tau = 3, 2.0
    losses = [[2.0, 1.0], [1.8, 1.1], [1.5, 0.9], [1.4, 1.0], [1.0, 0.95], [0.9, 0.9], [0.7, 0.9]]
    method = DWA(2, tau=tau, mode="window", window=window)
    got = [method.loss_weights(torch.tensor(l, dtype=torch.float64)) for l in losses]

    def expected(newer, older):
        r = [sum(n) / len(n) / (sum(o) / len(o)) for n, o in zip(zip(*newer), zip(*older))]
        e = [math.exp(x / tau) for x in r]
        return [2 * x / sum(e) / 2 for x in e]  # native scale of the window mode: mean (divided by T)

    for k in range(4):  # steps 0..window use the initial weights
        assert got[k].tolist() == [0.5, 0.5]
    # step 4: the FIFO still holds one of its initial rows of ones (the nash-mtl code)
    assert got[4].tolist() == pytest.approx(expected(losses[2:5], [[1.0, 1.0], *losses[0:2]]))
    assert got[5].tolist() == pytest.approx(expected(losses[3:6], losses[0:3]))
    assert got[6].tolist() == pytest.approx(expected(losses[4:7], losses[1:4]))
    summed = DWA(2, tau=tau, mode="window", window=window, update_scale="sum")
    last = [summed.loss_weights(torch.tensor(l, dtype=torch.float64)) for l in losses][-1]
    torch.testing.assert_close(last, 2 * got[6])
    assert float(last.sum()) == pytest.approx(2.0)


def test_dwa_state_round_trip():
    first = DWA(2, mode="window", window=2)
    for k in range(4):
        first.loss_weights(torch.tensor([1.0 + k, 2.0 / (k + 1)]))
    second = DWA(2, mode="window", window=2)
    second.load_state_dict(first.state_dict())
    nxt = torch.tensor([0.5, 0.7])
    assert first.loss_weights(nxt).tolist() == second.loss_weights(nxt).tolist()


# --------------------------------------------------------------------------------------- RLW


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


def draws(method: RLW, n: int) -> list[list[float]]:
    return [method.loss_weights(torch.ones(3)).tolist() for _ in range(n)]


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


# --------------------------------------------------------------------------------------- FAMO


def test_famo_effective_weights_are_the_gradient_of_the_log_objective():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, generator=gen, dtype=torch.float64)
    losses = (torch.rand(4, generator=gen, dtype=torch.float64) * 5 + 0.01).requires_grad_()
    w = famo_weights(logits, losses)
    assert torch.all(w > 0) and float(w.sum()) == pytest.approx(1.0)
    z, d = torch.softmax(logits, 0), losses.detach() + 1e-8
    c = (z / d).sum()
    ((z * torch.log(losses + 1e-8)).sum() / c).backward()
    torch.testing.assert_close(w, losses.grad)
    torch.testing.assert_close(w, z / (c * d))
    method = FAMO(4)
    torch.testing.assert_close(method.loss_weights(losses.detach()), torch.full((4,), 1.0, dtype=torch.float64)
                               / (losses.detach() + 1e-8) / (1 / (losses.detach() + 1e-8)).sum())
    with pytest.raises(ValueError, match="FAMO: needs every loss above its minimum"):
        FAMO(2, min_losses=[0.5, 0.0]).loss_weights(torch.tensor([0.4, 1.0]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_famo_equal_log_decrease_changes_logits_only_by_weight_decay(optimizer):
    before = torch.tensor([2.0, 0.5, 7.0, 1.2], dtype=torch.float64)
    after = before * math.exp(-0.3)
    logits = torch.tensor([0.5, -0.2, 0.1, 0.0])
    assert famo_logit_grad(logits, before, after).abs().max() < 1e-6
    method = FAMO(4, optimizer=optimizer, gamma=1e-2)
    method.logits.copy_(logits)
    method.after_step(before, after)
    if optimizer == "sgd":
        torch.testing.assert_close(method.logits, logits * (1 - 0.025 * 1e-2))
    else:
        param = logits.clone().requires_grad_()
        reference = torch.optim.Adam([param], lr=0.025, weight_decay=1e-2)
        param.grad = torch.zeros(4)
        reference.step()
        torch.testing.assert_close(method.logits, param.detach(), atol=1e-6, rtol=0)
    assert not torch.equal(method.logits, logits)


def test_famo_single_sgd_update_by_hand():
    before = torch.tensor([2.0, 2.0], dtype=torch.float64)
    after = torch.tensor([2 * math.exp(-1.0), 2 * math.exp(-0.5)], dtype=torch.float64)
    # z = [1/2, 1/2], delta = [1, 0.5], z.delta = 0.75 -> grad = z * (delta - 0.75) = [0.125, -0.125]
    torch.testing.assert_close(famo_logit_grad(torch.zeros(2), before, after), torch.tensor([0.125, -0.125]))
    method = FAMO(2, optimizer="sgd", lr=0.1, gamma=0.5)
    method.after_step(before, after)
    torch.testing.assert_close(method.logits, torch.tensor([-0.0125, 0.0125]))
    # second step: same losses -> grad from the new logits, plus the weight decay 0.5 * xi
    xi = torch.tensor([-0.0125, 0.0125])
    z = torch.softmax(xi, 0)
    delta = torch.tensor([1.0, 0.5])
    grad = z * (delta - z @ delta)
    method.after_step(before, after)
    torch.testing.assert_close(method.logits, xi - 0.1 * (grad + 0.5 * xi))
    # the task whose loss fell faster loses weight
    assert method.logits[0] < method.logits[1]


def test_famo_adam_matches_torch_adam_and_first_step_is_lr_sign():
    gen = torch.Generator().manual_seed(5)
    method = FAMO(3, lr=0.025, gamma=1e-3)
    param = torch.zeros(3, requires_grad=True)
    reference = torch.optim.Adam([param], lr=0.025, weight_decay=1e-3)
    for step in range(6):
        before = torch.rand(3, generator=gen) + 0.5
        after = before * (1 - 0.3 * torch.rand(3, generator=gen))
        param.grad = famo_logit_grad(param.detach(), before, after)
        reference.step()
        method.after_step(before, after)
        if step == 0:
            torch.testing.assert_close(method.logits, -0.025 * torch.sign(param.grad), atol=1e-6, rtol=0)
        torch.testing.assert_close(method.logits, param.detach(), atol=1e-6, rtol=1e-5)
    inner = method.inner_optimizer()
    assert isinstance(inner, torch.optim.Adam) and inner.param_groups[0]["params"][0] is method.logits
    assert float(inner.state_dict()["state"][0]["step"]) == 6 and method.logits.grad is None
    assert inner.param_groups[0]["lr"] == 0.025 and inner.param_groups[0]["weight_decay"] == 1e-3


def test_famo_inner_optimizer_is_lazy_and_follows_the_logits():
    method = FAMO(2, optimizer="sgd", lr=0.1, gamma=0.5)
    assert method._inner is None and method.get_extra_state() == {"rng": None, "optimizer": None, "after_step_skips": 0}
    method.after_step(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.5]))
    assert isinstance(method.inner_optimizer(), torch.optim.SGD)
    moved = method.double()  # replaces the logits buffer: the next step must update the new tensor
    before = moved.logits.clone()
    moved.after_step(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.5]))
    assert moved.logits.dtype == torch.float64 and not torch.equal(moved.logits, before)
    assert moved.inner_optimizer().param_groups[0]["params"][0] is moved.logits


def test_famo_state_round_trip_restores_logits_and_adam_state():
    gen = torch.Generator().manual_seed(8)
    pairs = [(b, b * (0.5 + 0.5 * torch.rand(3, generator=gen))) for b in torch.rand(6, 3, generator=gen) + 0.5]
    first = FAMO(3)
    for b, a in pairs[:3]:
        first.after_step(b, a)
    resumed, fresh = FAMO(3), FAMO(3)
    state = first.state_dict()
    resumed.load_state_dict(state)
    fresh.logits.copy_(first.logits)
    for b, a in pairs[3:]:
        for m in (first, resumed, fresh):
            m.after_step(b, a)
    assert torch.equal(first.logits, resumed.logits)
    # the saved optimizer state is a copy: the steps taken since did not change it
    assert float(state["_extra_state"]["optimizer"]["state"][0]["step"]) == 3
    assert float(first.get_extra_state()["optimizer"]["state"][0]["step"]) == 6
    assert not torch.allclose(first.logits, fresh.logits, atol=1e-6)
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(first.loss_weights(loss), resumed.loss_weights(loss))
    first.reset()
    assert first.logits.abs().max() == 0
    assert first.get_extra_state() == {"rng": None, "optimizer": None, "after_step_skips": 0}


def test_famo_skips_non_finite_after_losses_and_keeps_logits_out_of_the_optimizer():
    method = FAMO(2)
    method.after_step(torch.tensor([1.0, 1.0]), torch.tensor([float("nan"), 1.0]))
    assert method.logits.tolist() == [0.0, 0.0] and method.stats()["after_step_skips"] == 1.0
    assert [p for p in method.parameters() if p.requires_grad] == []


def test_famo_bn_update_option_reaches_the_after_step_pass():
    tasks = [TaskSpec("semseg", "segmentation", num_classes=3), TaskSpec("depth", "depth")]
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 16, 24, generator=gen),
             "targets": {"semseg": torch.randint(0, 3, (2, 16, 24), generator=gen),
                         "depth": torch.rand(2, 1, 16, 24, generator=gen) + 1}}
    for bn_update in (False, True):
        module = MTOModule(SegNetMTL({"semseg": 3, "depth": 1}, width=4, levels=2), tasks,
                           FAMO(2, bn_update=bn_update))
        module.train()
        bn = next(m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d))
        mean = bn.running_mean.clone()
        losses = module._losses_after_step(batch)
        assert losses.shape == (2,) and not losses.requires_grad
        assert torch.equal(bn.running_mean, mean) is not bn_update


# --------------------------------------------------------------------------------------- all five


@pytest.mark.parametrize(
    ("name", "hparams", "named"),
    [
        ("uw", {"init": float("nan")}, "UW: init.*nan"),
        ("uw", {"lr": 0.0}, "UW: lr.*0.0"),
        ("dwa", {"tau": 0}, "DWA: tau.*0"),
        ("dwa", {"mode": "iteration"}, "DWA: mode='iteration'"),
        ("dwa", {"window": 0}, "DWA: window.*0"),
        ("dwa", {"update_scale": "T"}, "DWA: update_scale='T'"),
        ("famo", {"lr": -1.0}, "FAMO: lr.*-1.0"),
        ("famo", {"gamma": -1e-3}, "FAMO: gamma.*-0.001"),
        ("famo", {"optimizer": "adamw"}, "FAMO: optimizer='adamw'"),
        ("famo", {"min_losses": [0.0]}, r"FAMO: min_losses=\[0.0\]"),
        ("famo", {"bn_update": "yes"}, "FAMO: bn_update.*'yes'"),
    ],
)
def test_invalid_hparams_name_method_field_and_value(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


@pytest.mark.parametrize("name", WEIGHTING_METHODS)
def test_registered_loss_methods_with_recorded_hparams(name):
    assert name in available()
    method = create(name, 3)
    assert method.needs is Needs.LOSSES
    losses = torch.tensor([0.5, 1.0, 2.0])
    weights = method.loss_weights(method.transform_losses(losses).detach())
    assert weights.shape == (3,) and torch.all(weights > 0)
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(method.aggregate(jac, losses)).all()
    assert all(math.isfinite(v) for v in method.stats().values())


def test_all_five_train_in_the_real_module(tmp_path):
    overrides = ["--suite.stl", "false", "--suite.seeds", "[0]", "--suite.train.epochs"]
    methods = "[{name: si}, {name: uw}, {name: dwa}, {name: rlw}, {name: famo}]"
    run_suite(load_suite(write_suite(tmp_path, methods), [*overrides, "1"]))
    # DWA's rule starts in epoch 2: a second, 3-epoch run checks the on_train_epoch_end hook
    run_suite(load_suite(write_suite(tmp_path, "[{name: dwa, label: dwa-3}]"), [*overrides, "3"]))
    found = {r["method_label"]: r for r in records(tmp_path).values()}
    assert set(found) == {*WEIGHTING_METHODS, "dwa-3"}
    tasks = [t["name"] for t in found["si"]["tasks"]]
    for name, rec in found.items():
        stats = rec["method_stats"]
        assert rec["status"] == "finished" and rec["timing"]["steps"] == (6 if name == "dwa-3" else 2), name
        assert all(f"weight_{i}" in stats and f"weight_{t}" in stats for i, t in enumerate(tasks)), name
    last = {name: [rec["method_stats"][f"weight_{t}"]["last"] for t in tasks] for name, rec in found.items()}
    si = found["si"]["method_stats"]
    for t in tasks:
        assert si[f"weight_{t}"]["last"] * si[f"loss_{t}"]["last"] == pytest.approx(1.0, rel=1e-5)
    assert sum(last["rlw"]) == pytest.approx(1.0, rel=1e-5) and sum(last["famo"]) == pytest.approx(1.0, rel=1e-5)
    famo = found["famo"]["method_stats"]
    assert any(abs(famo[f"logit_{i}"]["last"]) > 1e-3 for i in range(len(tasks)))  # after_step ran
    uw = found["uw"]["method_stats"]
    assert found["uw"]["method_hparams"] == {"init": 0.0, "lr": 0.025}
    assert any(abs(uw[f"log_var_{i}"]["last"]) > 1e-3 for i in range(len(tasks)))  # s is trained
    # DWA: ones in epochs 0 and 1, the epoch-mean rule (sum T, not all ones) from epoch 2 (on_train_epoch_end)
    dwa_epochs = [e["method_stats"] for e in found["dwa-3"]["epochs"]]
    assert [[e[f"weight_{t}"] for t in tasks] for e in dwa_epochs[:2]] == [[1.0] * len(tasks)] * 2
    third = [dwa_epochs[2][f"weight_{t}"] for t in tasks]
    assert sum(third) == pytest.approx(len(tasks), rel=1e-5) and max(abs(w - 1) for w in third) > 1e-4
