"""Tests of GradDrop (docs/methods.md §10): the shared asserts, then its defining properties."""

from __future__ import annotations

import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.graddrop import (
    GradDrop,
    graddrop_direction,
    graddrop_masks,
    graddrop_purity,
    graddrop_rep_direction,
)
from tests.method_properties import KINDS, jacobian
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "graddrop", Needs.JACOBIAN,
    defaults={"leak": 0.0, "eps": 0.0, "grad_source": "params"},
    bad_values=[
        ({"leak": 1.5}, "GradDrop: leak.*1.5"),
        ({"eps": -1e-07}, "GradDrop: eps.*-1e-07"),
        ({"leak": "0"}, "GradDrop: leak.*'0'"),
        ({"grad_source": "rep_batchsum"}, "GradDrop: grad_source='rep_batchsum'"),
    ],
    raw_steps=2,
)


TASK_COUNTS = (2, 3, 5)


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

