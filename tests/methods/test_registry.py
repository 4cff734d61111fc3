"""The registry: needs of the built-ins, unknown hyper-parameters and names with their nearest matches."""

from __future__ import annotations

import pytest

from benchmark.methods import Needs, available, create, get

SEED_METHODS = ("mgda", "mgda_ub", "imtl_g", "imtl_l", "imtl_h")


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

