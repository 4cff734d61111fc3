"""The engine writes exactly the gradients each method contract prescribes."""

import pytest
import torch
from torch import nn

from benchmark.engine import Engine, jacobian, jacobian_batched, jacobian_loop
from benchmark.methods import create
from benchmark.methods.base import Method, Needs


class FixedWeights(Method):
    needs = Needs.GRAMIAN

    def __init__(self, num_tasks, weights, grad_source="params", head_weighting="own"):
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.fixed = torch.tensor(weights, dtype=torch.float64)

    def gramian_weights(self, gramian, losses):
        return self.fixed


class SumJacobian(Method):
    needs = Needs.JACOBIAN

    def aggregate(self, jacobian, losses=None):
        return 2 * jacobian.sum(0)


class Toy(nn.Module):
    def __init__(self, tasks=3):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6))
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(tasks))

    def losses(self, x, z):
        return torch.stack([(h(z) - i).pow(2).mean() for i, h in enumerate(self.heads)])


def setup(tasks=3):
    model = Toy(tasks)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    return model, x, list(model.enc.parameters()), list(model.heads.parameters())


def reference_grads(model, x, coeffs, head_coeffs):
    """Gradients of sum(coeffs * L) for the encoder and sum(head_coeffs * L) for the heads, by plain autograd."""
    losses = model.losses(x, model.enc(x))
    enc = torch.autograd.grad((coeffs * losses).sum(), list(model.enc.parameters()), retain_graph=True)
    heads = torch.autograd.grad((head_coeffs * losses).sum(), list(model.heads.parameters()))
    return enc, heads


def test_loop_and_batched_jacobians_agree_with_per_task_grads():
    model, x, shared, _ = setup()
    losses = model.losses(x, model.enc(x))
    manual = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True)])
                          for l in losses])
    torch.testing.assert_close(jacobian_loop(losses, shared), manual)
    torch.testing.assert_close(jacobian_batched(losses, shared), manual)
    auto, mode = jacobian(losses, shared, "auto")
    assert mode in ("loop", "batched")
    torch.testing.assert_close(auto, manual)


def test_loss_method_backpropagates_weighted_sum():
    model, x, shared, heads = setup()
    engine = Engine(create("ew", 3), shared, heads)
    engine.step(model.losses(x, model.enc(x)))
    enc, hd = reference_grads(model, x, torch.ones(3), torch.ones(3))
    for p, g in zip(shared + heads, enc + hd):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("head_weighting", ["own", "weighted"])
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_gramian_method_writes_alpha_times_jacobian(head_weighting, mode):
    model, x, shared, heads = setup()
    alpha = [0.2, 0.5, 0.3]
    engine = Engine(FixedWeights(3, alpha, head_weighting=head_weighting), shared, heads, jacobian_mode=mode)
    info = engine.step(model.losses(x, model.enc(x)))
    a = torch.tensor(alpha)
    enc, hd = reference_grads(model, x, a, a if head_weighting == "weighted" else torch.ones(3))
    for p, g in zip(shared + heads, enc + hd):
        torch.testing.assert_close(p.grad, g)
    assert info.jacobian_mode == mode
    torch.testing.assert_close(info.weights, a.double())


def test_jacobian_method_direction_is_written():
    model, x, shared, heads = setup()
    Engine(SumJacobian(3), shared, heads).step(model.losses(x, model.enc(x)))
    enc, _ = reference_grads(model, x, 2 * torch.ones(3), torch.ones(3))
    for p, g in zip(shared, enc):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("source", ["rep_full", "rep_batchsum"])
def test_representation_mode_backpropagates_weighted_rep_gradient(source):
    model, x, shared, heads = setup()
    alpha = [0.6, 0.1, 0.3]
    engine = Engine(FixedWeights(3, alpha, grad_source=source), shared, heads)
    z = model.enc(x)
    z_in = z.detach().requires_grad_()
    engine.step(model.losses(x, z_in), z, z_in)
    enc, hd = reference_grads(model, x, torch.tensor(alpha), torch.ones(3))
    for p, g in zip(shared + heads, enc + hd):
        torch.testing.assert_close(p.grad, g)


def test_rep_gramian_uses_batch_sum_only_for_the_solver():
    model, x, shared, heads = setup()
    seen = {}

    class Spy(FixedWeights):
        def gramian_weights(self, gramian, losses):
            seen[self.grad_source] = gramian
            return self.fixed

    for source in ("rep_full", "rep_batchsum"):
        z = model.enc(x)
        z_in = z.detach().requires_grad_()
        Engine(Spy(3, [1 / 3] * 3, grad_source=source), shared, heads).step(model.losses(x, z_in), z, z_in)
    z = model.enc(x).detach().requires_grad_()
    g = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0] for l in model.losses(x, z)]).double()
    full, summed = g.flatten(1), g.sum(1)
    torch.testing.assert_close(seen["rep_full"], full @ full.T)
    torch.testing.assert_close(seen["rep_batchsum"], summed @ summed.T)


def test_method_parameters_get_their_own_loss_gradient():
    model, x, shared, heads = setup()
    method = create("imtl_l", 3)
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([0.1, -0.2, 0.3]))
    raw = model.losses(x, model.enc(x))
    Engine(method, shared, heads).step(method.transform_losses(raw))
    s = method.scale.log_scale
    torch.testing.assert_close(s.grad, (s.exp() * raw - 1).detach())


def test_non_finite_weights_raise():
    model, x, shared, heads = setup()
    engine = Engine(FixedWeights(3, [float("nan"), 0.5, 0.5]), shared, heads)
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        engine.step(model.losses(x, model.enc(x)))


def test_unknown_jacobian_mode_is_named():
    with pytest.raises(ValueError, match="jacobian_mode='fast'"):
        Engine(create("ew", 2), [], [], jacobian_mode="fast")


class CountingWeights(Method):
    """Gramian weights that change on every call, so a reused step is distinguishable from a fresh one."""

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks, grad_source="params"):
        super().__init__(num_tasks, grad_source=grad_source)
        self.calls = 0

    def gramian_weights(self, gramian, losses):
        self.calls += 1
        return torch.arange(1, len(losses) + 1, dtype=torch.float64) * self.calls


@pytest.mark.parametrize("grad_source", ["params", "rep_full"])
def test_update_every_reuses_the_last_weights_with_one_backward(grad_source):
    model, x, shared, heads = setup()
    method = CountingWeights(3, grad_source=grad_source)
    engine = Engine(method, shared, heads, "loop", update_every=3)
    expected_calls = [1, 1, 1, 2, 2]
    for step, calls in enumerate(expected_calls):
        for p in model.parameters():
            p.grad = None
        z = model.enc(x)
        z_in = z.detach().requires_grad_() if grad_source != "params" else z
        info = engine.step(model.losses(x, z_in), z, z_in)
        assert method.calls == calls, step
        weights = torch.arange(1.0, 4.0) * calls
        enc, head = reference_grads(model, x, weights, torch.ones(3))
        for p, g in zip(shared + heads, enc + head):
            torch.testing.assert_close(p.grad, g)
        assert (info.jacobian_mode == "reused") == (step % 3 != 0)


def test_update_every_is_refused_for_non_gramian_methods():
    model, x, shared, heads = setup()
    with pytest.raises(ValueError, match="Gramian methods only"):
        Engine(SumJacobian(3), shared, heads, "loop", update_every=2)
    with pytest.raises(ValueError, match="update_every"):
        Engine(FixedWeights(3, [1, 1, 1]), shared, heads, "loop", update_every=0)
