"""Gradient norms and cosines, and the engine's logging probe: the right Gramian, and the same update as without."""

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmark.engine import Engine
from benchmark.grad_stats import cosine_matrix, gradient_stats
from benchmark.methods import create
from tests.test_engine import FixedWeights, SumJacobian, setup

NAMES = ["a", "b", "c"]


def test_norms_and_cosines_match_a_direct_computation():
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = gradient_stats(g @ g.T, NAMES)
    for i, t in enumerate(NAMES):
        assert stats[f"grad_norm/{t}"] == pytest.approx(float(g[i].norm()))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        expected = float(F.cosine_similarity(g[i], g[j], dim=0))
        assert stats[f"grad_cos/{NAMES[i]}/{NAMES[j]}"] == pytest.approx(expected)
    assert len(stats) == 3 + 3
    mat = cosine_matrix(stats, NAMES)
    torch.testing.assert_close(mat, F.cosine_similarity(g[:, None], g[None], dim=-1))


def test_a_zero_gradient_has_a_norm_but_no_cosine():
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    stats = gradient_stats(g @ g.T, NAMES)
    assert stats["grad_norm/b"] == 0.0 and "grad_cos/a/b" not in stats and "grad_cos/b/c" not in stats
    assert stats["grad_cos/a/c"] == pytest.approx(2 ** -0.5)
    assert torch.isnan(cosine_matrix(stats, NAMES)[0, 1])
    with pytest.raises(ValueError, match="does not match the 2 tasks"):
        gradient_stats(g @ g.T, ["a", "b"])


def reference_gramian(model, x):
    losses = model.losses(x, model.enc(x))
    shared = list(model.enc.parameters())
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True)]) for l in losses]
    j = torch.stack(rows).double()
    return j @ j.T


CASES = {
    "ew (losses: extra passes)": (lambda: create("ew", 3), False, "extra"),
    "gramian on params (the step's own)": (lambda: FixedWeights(3, [0.2, 0.3, 0.5]), False, "engine"),
    "jacobian on params (the step's own)": (lambda: SumJacobian(3), False, "engine"),
    "gramian on rep_full (extra, through z)": (lambda: FixedWeights(3, [0.2, 0.3, 0.5], "rep_full"), True, "extra"),
}


@pytest.mark.parametrize("case", CASES)
def test_probe_gives_the_parameter_gramian_and_leaves_the_update_unchanged(case):
    make, rep, source = CASES[case]
    model, x, _, _ = setup()
    expected = reference_gramian(model, x)
    grads = []
    for probe in (False, True):
        m = copy.deepcopy(model)
        engine = Engine(make(), list(m.enc.parameters()), list(m.heads.parameters()), "loop")
        z = m.enc(x)
        z_in = z.detach().requires_grad_() if rep else z
        engine.step(m.losses(x, z_in), z, z_in, probe=probe)
        grads.append([p.grad.clone() for p in m.parameters()])
        if probe:
            assert engine.last_probe.source == source and engine.last_probe.seconds >= 0
            torch.testing.assert_close(engine.last_probe.gramian, expected)
        else:
            assert engine.last_probe is None
    for without, with_probe in zip(*grads):
        assert torch.equal(without, with_probe)


def test_an_amortised_step_probes_with_extra_passes():
    model, x, _, _ = setup()
    engine = Engine(FixedWeights(3, [1.0, 1.0, 1.0]), list(model.enc.parameters()), list(model.heads.parameters()),
                    "loop", update_every=2)
    engine.step(model.losses(x, model.enc(x)), probe=True)
    assert engine.last_probe.source == "engine"
    engine.step(model.losses(x, model.enc(x)), probe=True)
    assert engine.last_probe.source == "extra"
    torch.testing.assert_close(engine.last_probe.gramian, reference_gramian(model, x))
