"""The asserts every built-in method passes, parametrised in each method's test file by :func:`shared_asserts`.

* ``contract``, ``needs``, ``determinism``, ``adversarial``: the checks that ``mtobench submit`` runs on plugins
  (:mod:`benchmark.methods.checks`);
* ``registered``: listed by ``available()`` with the declared ``needs``;
* ``hparams``: ``hparams()`` names exactly the constructor arguments and rebuilds the method;
* ``state_dict``: a fresh instance loads the state dict;
* ``defaults``: the recommended defaults of docs/methods.md, as recorded in ``hparams()``;
* ``bad_value/<i>``: a bad hyper-parameter raises ``ValueError`` naming the method, the field and the value;
* ``positive_loss_weights`` (loss weightings that ask for it): positive ``[T]`` weights, a finite aggregate;
* ``raw_jacobian/<case>`` (methods with ``aggregate``): a finite float32 direction of the right shape and finite
  stats on every kind of Jacobian of :mod:`tests.method_properties` and every adversarial one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch

from benchmark.methods import Needs, available, create, get
from benchmark.methods.checks import CHECKS, uses_aggregate
from tests.method_properties import KINDS, adversarial_jacobians, jacobian


def _registered(name: str, needs: Needs, **_) -> None:
    assert name in available() and get(name).needs is needs


def _hparams(name: str, **_) -> None:
    method = create(name, 3)
    accepted = set(inspect.signature(type(method).__init__).parameters) - {"self", "num_tasks"}
    assert set(method.hparams()) == accepted
    assert create(name, 3, **method.hparams()).hparams() == method.hparams()


def _state_dict(name: str, **_) -> None:
    method, clone = create(name, 3), create(name, 3)
    clone.load_state_dict(method.state_dict())
    assert clone.state_dict().keys() == method.state_dict().keys()


def _defaults(name: str, defaults: dict, **_) -> None:
    recorded = create(name, 3).hparams()
    assert {k: recorded[k] for k in defaults} == defaults


def _bad_value(name: str, hparams: dict, named: str, **_) -> None:
    with pytest.raises(ValueError, match=named):
        create(name, 3, **hparams)


def _raw_jacobian(name: str, case: str, raw_hparams: dict, raw_steps: int, randomise_params: bool, **_) -> None:
    g = adversarial_jacobians()[case] if case in adversarial_jacobians() else jacobian(case, 3, seed=1)
    jac = torch.as_tensor(g, dtype=torch.float32)
    method = create(name, jac.shape[0], **raw_hparams)
    if randomise_params:
        with torch.no_grad():
            for p in method.parameters():
                p.copy_(torch.linspace(-1.0, 1.0, p.numel()))
    for _ in range(raw_steps):
        direction = method.aggregate(jac, torch.rand(jac.shape[0]) + 0.1)
        assert direction.dtype == torch.float32 and direction.shape == (jac.shape[1],)
        assert torch.all(torch.isfinite(direction))
    assert all(math.isfinite(v) for v in method.stats().values())


def _positive_loss_weights(name: str, **_) -> None:
    method = create(name, 3)
    losses = torch.tensor([0.5, 1.0, 2.0])
    weights = method.loss_weights(method.transform_losses(losses).detach())
    assert weights.shape == (3,) and torch.all(weights > 0)
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(method.aggregate(jac, losses)).all()
    assert all(math.isfinite(v) for v in method.stats().values())


def _check(check: str) -> Callable:
    def run(name: str, **_) -> None:
        assert CHECKS[check](get(name)) == []
    return run


def shared_asserts(name: str, needs: Needs, defaults: dict | None = None,
                   bad_values: list[tuple[dict, str]] = (), raw_jacobians: bool = True,
                   raw_hparams: dict | None = None, raw_steps: int = 1, randomise_params: bool = False,
                   positive_loss_weights: bool = False) -> Callable:
    """A test function parametrised over every shared assert for the method ``name``; bind it to a ``test_``
    name in the method's test file. ``raw_jacobians=False`` skips the raw-Jacobian cases (a method that
    raises on some of them by design, and tests that in its own file)."""
    cases: list = [pytest.param(_check(c), {}, id=c) for c in CHECKS]
    cases += [pytest.param(_registered, {}, id="registered"), pytest.param(_hparams, {}, id="hparams"),
              pytest.param(_state_dict, {}, id="state_dict")]
    if defaults is not None:
        cases.append(pytest.param(_defaults, {"defaults": defaults}, id="defaults"))
    cases += [pytest.param(_bad_value, {"hparams": h, "named": n}, id=f"bad_value/{i}")
              for i, (h, n) in enumerate(bad_values)]
    if positive_loss_weights:
        cases.append(pytest.param(_positive_loss_weights, {}, id="positive_loss_weights"))
    if raw_jacobians and uses_aggregate(get(name)):
        raw = {"raw_hparams": raw_hparams or {}, "raw_steps": raw_steps, "randomise_params": randomise_params}
        cases += [pytest.param(_raw_jacobian, {"case": c, **raw}, id=f"raw_jacobian/{c}")
                  for c in (*KINDS, *adversarial_jacobians())]

    @pytest.mark.parametrize(("check", "kwargs"), cases)
    def test_shared(check: Callable, kwargs: dict) -> None:
        check(name, needs=needs, **kwargs)

    return test_shared


MGDA_BAD_VALUES = [
    ({"normalization": "L2"}, "normalization='L2'"),
    ({"solver": "fw"}, "solver='fw'"),
    ({"max_iter": 0}, "max_iter.*0"),
    ({"max_iter": 2.5}, "max_iter.*2.5"),
    ({"tol": -1e-05}, "tol.*-1e-05"),
    ({"tol": float("nan")}, "tol.*nan"),
    ({"official_two_point_clip": "yes"}, "official_two_point_clip.*'yes'"),
    ({"grad_source": "rep"}, "grad_source='rep'"),
    ({"head_weighting": "both"}, "head_weighting='both'"),
]
"""Bad hyper-parameters of MGDA and MGDA-UB (one solver family, the same options) and the error they give."""
