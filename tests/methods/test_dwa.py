"""Tests of DWA (docs/methods.md §4): the shared asserts, then its defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.methods import Needs
from benchmark.methods.dwa import DWA, dwa_weights
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "dwa", Needs.LOSSES,
    bad_values=[
        ({"tau": 0}, "DWA: tau.*0"),
        ({"mode": "iteration"}, "DWA: mode='iteration'"),
        ({"window": 0}, "DWA: window.*0"),
        ({"update_scale": "T"}, "DWA: update_scale='T'"),
    ],
    positive_loss_weights=True,
)


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

