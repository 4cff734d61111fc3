"""Contract checks shared by every built-in method: registration, recorded hyper-parameters, state round-trip."""

import inspect

import pytest

from benchmark.methods import Needs, available, create, get
from benchmark.methods.registry import _BUILTINS

BUILTINS = sorted(_BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_hparams_record_every_constructor_choice(name):
    method = create(name, 3)
    assert name in available() and isinstance(get(name).needs, Needs)
    accepted = set(inspect.signature(type(method).__init__).parameters) - {"self", "num_tasks"}
    assert set(method.hparams()) == accepted
    assert create(name, 3, **method.hparams()).hparams() == method.hparams()


@pytest.mark.parametrize("name", BUILTINS)
def test_state_dict_round_trips(name):
    method = create(name, 3)
    clone = create(name, 3)
    clone.load_state_dict(method.state_dict())
    assert clone.state_dict().keys() == method.state_dict().keys()
