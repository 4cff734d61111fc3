"""Tests of MGDA-UB (docs/methods.md §7): the shared asserts, then its defining properties."""

from __future__ import annotations

from benchmark.methods import Needs, create
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "mgda_ub", Needs.GRAMIAN,
    bad_values=[
        ({"normalization": "L2"}, "normalization='L2'"),
        ({"solver": "fw"}, "solver='fw'"),
        ({"max_iter": 0}, "max_iter.*0"),
        ({"max_iter": 2.5}, "max_iter.*2.5"),
        ({"tol": -1e-05}, "tol.*-1e-05"),
        ({"tol": float("nan")}, "tol.*nan"),
        ({"official_two_point_clip": "yes"}, "official_two_point_clip.*'yes'"),
        ({"grad_source": "rep"}, "grad_source='rep'"),
        ({"head_weighting": "both"}, "head_weighting='both'"),
    ],
    randomise_params=True,
)


def test_mgda_ub_defaults_to_the_representation():
    assert create("mgda_ub", 3).grad_source == "rep_full"
    assert create("mgda", 3).grad_source == "params"
    assert create("mgda_ub", 3, grad_source="rep_batchsum").hparams()["grad_source"] == "rep_batchsum"

