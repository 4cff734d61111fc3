"""Tests of MGDA-UB (docs/methods.md §7): the shared asserts, then its defining properties."""

from __future__ import annotations

from benchmark.methods import Needs, create
from tests.methods.shared import MGDA_BAD_VALUES, shared_asserts

test_shared = shared_asserts(
    "mgda_ub", Needs.GRAMIAN,
    bad_values=MGDA_BAD_VALUES,
    randomise_params=True,
)


def test_mgda_ub_defaults_to_the_representation():
    assert create("mgda_ub", 3).grad_source == "rep_full"
    assert create("mgda", 3).grad_source == "params"
    assert create("mgda_ub", 3, grad_source="rep_batchsum").hparams()["grad_source"] == "rep_batchsum"

