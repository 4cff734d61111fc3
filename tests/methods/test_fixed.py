"""Tests of Fixed loss weights: the shared asserts, then its defining properties."""

from __future__ import annotations

from benchmark.methods import Needs
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "fixed", Needs.LOSSES,
    defaults={"weights": [1.0, 1.0, 1.0]},
)


