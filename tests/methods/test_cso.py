"""CSO (Jeong & Yoon, CVPR 2024): connection strength, priority, Phase 1, Phase 2 and the phase mix."""

import copy

import pytest
import torch
from torch import nn

from benchmark.config import load_suite
from benchmark.methods import (
    Needs,
    StepContext,
    create,
)
from benchmark.methods.cso import (
    connection_strength,
    name_rule,
    normalized_strength,
    phase1_mixed,
    project_on_owners,
    top_task,
)
from models.segnet import SegNetMTL
from models.task_norm import Connection, TaskBatchNorm2d, conditioned_on
from tests.methods.shared import shared_asserts
from tests.test_runner import write_suite

test_shared = shared_asserts(
    "cso", Needs.LOSSES,
    defaults={"mode": "mixed", "draw": "iteration", "order": "fixed", "degenerate": "sum", "weights": [1.0] * 3,
              "eps": 1e-5, "pairing": "all"},
    bad_values=[({"pairing": "names"}, "CSO: pairing='names'"), ({"degenerate": "skip"}, "CSO: degenerate='skip'")],
)


TASKS = ["a", "b", "c"]


def test_connection_strength_by_hand():
    weight = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.0]]]])  # channel sums of squares: 5 and 9
    gamma = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    var = torch.tensor([[1.0, 3.0], [0.0, 1.0]])
    s = connection_strength(weight, gamma, var, eps=1.0)
    assert torch.allclose(s, torch.tensor([[2.5, 9.0], [20.0, 4.5]]))
    s_hat = normalized_strength(s)
    assert torch.allclose(s_hat, torch.tensor([[2.5 / 11.5, 9 / 11.5], [20 / 24.5, 4.5 / 24.5]]))
    assert torch.allclose(s_hat.sum(dim=1), torch.ones(2))
    assert top_task(s_hat).tolist() == [1, 0]


def test_conv_weights_matter_only_through_the_normaliser():
    """Scaling one channel's weights changes every task's normaliser but never the per-channel ratio between
    tasks' raw strengths: the note in docs/cso.md §1.3."""
    torch.manual_seed(0)
    w, gamma, var = torch.randn(5, 3, 3, 3), torch.rand(3, 5) + 0.1, torch.rand(3, 5) + 0.1
    w2 = w.clone()
    w2[2] *= 7
    s1, s2 = connection_strength(w, gamma, var), connection_strength(w2, gamma, var)
    assert torch.allclose(s1[:, 2] / s1[0, 2], s2[:, 2] / s2[0, 2])


def test_priority_ties_go_to_the_lower_task_index():
    s_hat = torch.tensor([[0.5, 0.2, 0.3], [0.5, 0.3, 0.3], [0.1, 0.3, 0.3]])
    assert top_task(s_hat).tolist() == [0, 1, 0]


def test_priorities_of_a_model_match_its_batchnorms():
    torch.manual_seed(1)
    model = SegNetMTL({t: 2 for t in TASKS}, width=4, levels=2, task_bn=True)
    for c in model.connections():
        for bn in c.norm.norms.values():
            nn.init.uniform_(bn.weight, 0.2, 2.0)
            bn.running_var.uniform_(0.5, 2.0)
    owners = create("cso", 3).priorities(model, TASKS)
    assert list(owners) == [c.name for c in model.connections()] and len(owners) == 1 + 2 * 2 + 2 * 2
    for c in model.connections():
        a = c.conv.weight.detach().pow(2).sum(dim=(1, 2, 3))
        s = torch.stack([a * c.norm.norms[t].weight.detach() ** 2 / (c.norm.norms[t].running_var + 1e-5)
                         for t in TASKS])
        expected = [max(range(3), key=lambda k: (s[k, p] / s[k].sum()).item()) for p in range(s.shape[1])]
        assert owners[c.name].tolist() == expected


def brute_force_projection(grads, owner):
    """Reference: per group, per other task, one dot product of the flattened group; float64, plain loops."""
    out = grads.double().clone()
    for i in set(owner.tolist()):
        idx = [p for p in range(len(owner)) if owner[p] == i]
        ref = torch.cat([grads[i, p].double().flatten() for p in idx])
        for j in range(grads.shape[0]):
            if j == i:
                continue
            v = torch.cat([grads[j, p].double().flatten() for p in idx])
            d = float(ref @ v)
            if d < 0:
                v = v - d / float(ref @ ref) * ref
                sizes = [grads[j, p].numel() for p in idx]
                for p, chunk in zip(idx, v.split(sizes)):
                    out[j, p] = chunk.view_as(grads[j, p])
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_projection_matches_brute_force_and_leaves_no_conflict(seed, num_tasks):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_tasks, 7, 3, 2, 2, generator=g, dtype=torch.float64)
    grads[1] = -grads[0] + 0.1 * grads[1]  # strongly conflicting pair
    owner = torch.randint(0, num_tasks, (7,), generator=g)
    owner[:2] = torch.tensor([0, 1])
    new, fired, tested = project_on_owners(grads, owner)
    assert torch.allclose(new, brute_force_projection(grads, owner), atol=1e-12)
    assert fired > 0 and tested == len(owner.unique()) * (num_tasks - 1)
    for i in owner.unique().tolist():
        group = owner == i
        assert torch.equal(new[i, group], grads[i, group])
        ref = new[i, group].flatten()
        for j in range(num_tasks):
            assert float(ref @ new[j, group].flatten()) >= -1e-10
    perm = torch.randperm(num_tasks, generator=g)
    inv = torch.argsort(perm)
    permuted, _, _ = project_on_owners(grads[perm], inv[owner])
    assert torch.allclose(permuted[inv], new, atol=1e-12)


def test_degenerate_layer_is_summed_or_projected_as_asked():
    grads = torch.tensor([[[1.0, 0.0]], [[-1.0, 1.0]]])
    owner = torch.tensor([0])
    same, fired, tested = project_on_owners(grads, owner, "sum")
    assert same is grads and fired == tested == 0
    projected, fired, _ = project_on_owners(grads, owner, "project")
    assert fired == 1 and torch.allclose(projected, torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))


def test_zero_owner_gradient_projects_nothing():
    grads = torch.tensor([[[0.0, 0.0]], [[-1.0, 1.0]], [[1.0, 1.0]]])
    new, fired, _ = project_on_owners(grads, torch.tensor([0]), "project")
    assert fired == 0 and torch.equal(new, grads)


# --- steps on a tiny model --------------------------------------------------------------------------------------

def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = SegNetMTL({t: 1 for t in TASKS}, width=3, levels=1, task_bn=True)
    x = torch.randn(4, 3, 8, 8)
    targets = {t: torch.randn(4, 1, 8, 8) for t in TASKS}
    return model, {"image": x, "targets": targets}


def loss_fn(model, batch, task):
    return (model.head(task, model.encode(batch["image"], task)) - batch["targets"][task]).pow(2).mean()


class Recording:
    """An optimizer wrapper that snapshots every parameter and buffer after each step."""

    def __init__(self, opt, model):
        self.opt, self.model, self.snapshots = opt, model, []

    def zero_grad(self, set_to_none=True):
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.opt.step()
        self.snapshots.append(copy.deepcopy(self.model.state_dict()))


def context(model, batch, opt, epoch=0, epochs=1):
    return StepContext(model=model, task_names=TASKS, batch=batch, optimizer=opt,
                       losses=lambda: torch.stack([loss_fn(model, batch, t) for t in TASKS]),
                       task_loss=lambda t: loss_fn(model, batch, t), backward=lambda loss: loss.backward(),
                       finite=lambda losses: bool(torch.isfinite(losses).all()), epoch=epoch, epochs=epochs)


def changed(before, after, task):
    """Names of the entries of task ``task``'s head and per-task BNs that differ between two state dicts."""
    keys = [k for k in before if k.startswith(f"heads.{task}.") or f".norms.{task}." in k]
    return {k for k in keys if not torch.equal(before[k], after[k])}


def test_phase1_takes_one_step_per_task_and_moves_only_that_task():
    model, batch = tiny_problem()
    opt = Recording(torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1), model)
    start = copy.deepcopy(model.state_dict())
    method = create("cso", 3, mode="phase1")
    assert method.own_step(context(model, batch, opt)) is True
    assert len(opt.snapshots) == 3
    states = [start, *opt.snapshots]
    shared = [k for k in start if k.startswith(("stem.", "down.", "up.")) and ".norms." not in k]
    for k, task in enumerate(TASKS):
        before, after = states[k], states[k + 1]
        assert changed(before, after, task), f"sub-step {k} did not move task {task}"
        for other in TASKS:
            if other != task:
                assert not changed(before, after, other), f"sub-step {k} moved task {other}"
        assert any(not torch.equal(before[n], after[n]) for n in shared)
    assert method.stats()["phase1"] == 1.0


def test_phase2_matches_a_brute_force_step():
    model, batch = tiny_problem(3)
    with torch.no_grad():
        for c in model.connections():
            for bn in c.norm.norms.values():
                bn.weight.uniform_(0.2, 2.0)
    reference = copy.deepcopy(model)
    opt = Recording(torch.optim.SGD(model.parameters(), lr=1.0), model)
    method = create("cso", 3, mode="phase2", weights=[1.0, 0.5, 2.0])
    owners = method.priorities(reference, TASKS)
    assert method.own_step(context(model, batch, opt)) is True
    assert len(opt.snapshots) == 1

    params = dict(reference.named_parameters())
    per_task = [torch.autograd.grad(w * loss_fn(reference, batch, t), list(params.values()), allow_unused=True)
                for w, t in zip([1.0, 0.5, 2.0], TASKS)]
    per_task = [dict(zip(params, g)) for g in per_task]
    conv_of = {id(c.conv.weight): c.name for c in reference.connections()}
    fired = 0
    for name, p in params.items():
        present = [g[name] for g in per_task if g[name] is not None]
        if id(p) in conv_of:
            assert len(present) == 3
            owner = owners[conv_of[id(p)]]
            stacked = torch.stack(present)
            expected = brute_force_projection(stacked, owner).sum(0).float()
            fired += not torch.allclose(expected, stacked.sum(0), atol=1e-7)
        else:
            expected = torch.stack(present).sum(0)
        step = p.detach() - opt.snapshots[0][name]
        assert torch.allclose(step, expected, atol=1e-6), name
    assert len(conv_of) == 5
    assert fired >= 1, "no projection fired: the test would not see a broken projection"
    stats = method.stats()
    assert stats["phase1"] == 0.0 and 0 < stats["projection_rate"] <= 1


def test_task_batchnorm_updates_only_the_conditioned_task():
    model, batch = tiny_problem()
    before = copy.deepcopy(model.state_dict())
    model.encode(batch["image"], "b")
    after = model.state_dict()
    moved = {k for k in before if "running_mean" in k and not torch.equal(before[k], after[k])}
    assert moved and all(".norms.b." in k for k in moved)
    with pytest.raises(RuntimeError, match="no active task"):
        TaskBatchNorm2d(3, TASKS)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="needs a task"):
        model.encode(batch["image"])
    with pytest.raises(KeyError, match="zz"), conditioned_on(model, "zz"):
        pass


def test_task_bn_parameters_are_task_parameters():
    model = SegNetMTL({t: 1 for t in TASKS}, width=3, levels=1, task_bn=True)
    shared = {id(p) for p in model.shared_parameters()}
    own = [{id(p) for p in model.task_parameters(t)} for t in TASKS]
    assert all(not (shared & o) for o in own) and not (own[0] & own[1])
    assert len(shared) + sum(map(len, own)) == len(list(model.parameters()))
    plain = SegNetMTL({t: 1 for t in TASKS}, width=3, levels=1)
    assert plain.connections() == [] and len(list(plain.parameters())) < len(list(model.parameters()))


@pytest.mark.parametrize("draw", ["iteration", "epoch"])
def test_mixed_phase_schedule_has_the_expected_phase1_fraction(draw):
    torch.manual_seed(0)
    epochs, iters = 5, 3000 if draw == "iteration" else 1
    method = create("cso", 2, draw=draw)
    if draw == "iteration":
        for e in range(epochs):
            frac = sum(method.use_phase1(e, epochs) for _ in range(iters)) / iters
            assert abs(frac - (1 - e / epochs)) < 0.04, (e, frac)
        return
    firsts = []
    for _ in range(2000):
        method = create("cso", 2, draw=draw)
        per_epoch = []
        for e in range(epochs):
            picks = {method.use_phase1(e, epochs) for _ in range(4)}
            assert len(picks) == 1, "a per-epoch draw must hold for the whole epoch"
            per_epoch.append(picks.pop())
        firsts.append(per_epoch)
    for e in range(epochs):
        frac = sum(p[e] for p in firsts) / len(firsts)
        assert abs(frac - (1 - e / epochs)) < 0.04, (e, frac)


def test_fixed_modes_and_the_threshold():
    assert phase1_mixed(0.0, 0, 4) and not phase1_mixed(0.49, 2, 4) and phase1_mixed(0.5, 2, 4)
    seq = create("cso", 2, mode="sequential")
    assert [seq.use_phase1(e, 4) for e in range(4)] == [True, True, False, False]
    assert [seq.use_phase1(e, 5) for e in range(5)] == [True, True, True, False, False]
    assert all(create("cso", 2, mode="phase1").use_phase1(e, 3) for e in range(3))
    assert not any(create("cso", 2, mode="phase2").use_phase1(e, 3) for e in range(3))


@pytest.mark.parametrize(("kwargs", "needle"), [({"mode": "mix"}, "mode='mix'"), ({"draw": "step"}, "draw"),
                                                ({"weights": [1.0]}, "weights"), ({"degenerate": "x"}, "degenerate")])
def test_bad_options_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create("cso", 2, **kwargs)


def test_cso_refuses_a_model_without_task_bn():
    with pytest.raises(ValueError, match="task_bn"):
        create("cso", 3).check_model(SegNetMTL({t: 1 for t in TASKS}, width=3, levels=1))


def test_shuffled_order_still_steps_every_task_once():
    orders = set()
    for seed in range(8):
        model, batch = tiny_problem()
        opt = Recording(torch.optim.Adam(model.parameters(), lr=1e-2), model)
        states = [copy.deepcopy(model.state_dict())]
        torch.manual_seed(seed)
        create("cso", 3, mode="phase1", order="shuffle").own_step(context(model, batch, opt))
        states += opt.snapshots
        moved = tuple(next(t for t in TASKS if changed(states[k], states[k + 1], t)) for k in range(3))
        assert sorted(moved) == TASKS
        orders.add(moved)
    assert len(orders) > 1, "shuffle never changed the order"


def test_phase_draws_resume_from_the_state_dict():
    torch.manual_seed(3)
    method = create("cso", 3)
    first = [method.use_phase1(1, 4) for _ in range(5)]
    saved = copy.deepcopy(method.state_dict())
    expected = [method.use_phase1(1, 4) for _ in range(40)]
    resumed = create("cso", 3)
    resumed.load_state_dict(saved)
    assert [resumed.use_phase1(1, 4) for _ in range(40)] == expected and len(set(first + expected)) == 2


def test_degenerate_default_sums_a_single_owner_layer():
    """The default (the official code's) leaves a layer whose channels all have one owner unprojected."""
    grads = torch.tensor([[[1.0, 0.0]], [[-1.0, 1.0]]])
    same, fired, tested = project_on_owners(grads, torch.tensor([0]))
    assert same is grads and fired == tested == 0
    assert create("cso", 2).degenerate == "sum"


def test_phase1_steps_on_the_weighted_task_loss():
    """Phase 1's step k moves the parameters by ``-lr w_k grad L_k`` (SGD, no momentum): the weights apply."""
    weights = [2.0, 0.5, 0.0]
    model, batch = tiny_problem(1)
    opt = Recording(torch.optim.SGD(model.parameters(), lr=0.1), model)
    start = copy.deepcopy(model.state_dict())
    create("cso", 3, mode="phase1", weights=weights).own_step(context(model, batch, opt))
    states = [start, *opt.snapshots]
    probe, _ = tiny_problem(1)
    for k, task in enumerate(TASKS):
        probe.load_state_dict(states[k])
        probe.zero_grad(set_to_none=True)
        loss_fn(probe, batch, task).backward()
        for name, p in probe.named_parameters():
            expected = states[k][name] - 0.1 * weights[k] * (0 if p.grad is None else p.grad)
            torch.testing.assert_close(states[k + 1][name], expected, rtol=1e-5, atol=1e-7)


class Named(nn.Module):
    """Two conv -> per-task BN pairs, one named like the official code expects (conv1 / bn1), one not."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), TaskBatchNorm2d(4, TASKS)
        self.fuse = nn.Sequential(nn.Conv2d(4, 4, 1), TaskBatchNorm2d(4, TASKS))

    def connections(self):
        return [Connection("conv1", self.conv1, self.bn1), Connection("fuse.0", self.fuse[0], self.fuse[1])]


def test_name_rule_pairing_projects_only_conv_bn_named_pairs():
    model = Named()
    assert [c.name for c in name_rule(model, model.connections())] == ["conv1"]
    assert set(create("cso", 3).priorities(model, TASKS)) == {"conv1", "fuse.0"}
    assert set(create("cso", 3, pairing="name_rule").priorities(model, TASKS)) == {"conv1"}
    tiny, _ = tiny_problem()
    with pytest.raises(ValueError, match="pairing='name_rule' pairs none"):
        create("cso", 3, pairing="name_rule").check_model(tiny)


def test_a_suite_clipping_the_shared_gradient_refuses_cso(tmp_path):
    """CSO's own steps skip ``train.clip_shared_grad_norm``, so asking for both is an error at load time."""
    suite = write_suite(tmp_path, "[{name: ew}, {name: cso, model: {task_bn: true}}]")
    with pytest.raises(ValueError, match=r"train.clip_shared_grad_norm=1.0 is not applied .*\(cso\)"):
        load_suite(suite, ["--suite.train.clip_shared_grad_norm", "1.0"])
    assert load_suite(write_suite(tmp_path, "[{name: ew}]"), ["--suite.train.clip_shared_grad_norm", "1.0"])


def test_name_rule_on_hrnet_pairs_the_authors_84_of_its_144_connections():
    from models.hrnet import HRNetMTL

    model = HRNetMTL({"a": 1, "b": 1}, task_bn=True)
    paired = name_rule(model, model.connections())
    assert len(model.connections()) == 144 and len(paired) == 84
    assert not any(k in c.name for c in paired for k in ("downsample", "transition", "fuse"))
