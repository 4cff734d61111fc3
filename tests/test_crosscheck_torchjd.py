"""Cross-check against TorchJD (the optional ``compare`` extra; skipped without it)."""

import pytest
import torch

from benchmark.methods import create
from tests.method_properties import jacobian

aggregation = pytest.importorskip("torchjd.aggregation")

CASES = [(kind, t) for kind in ("random", "conflicting", "collinear", "zero_row") for t in (2, 3, 5)]


@pytest.mark.parametrize(("kind", "num_tasks"), CASES)
@pytest.mark.parametrize(("ours", "theirs"), [("upgrad", "UPGrad"), ("imtl_g", "IMTLG")])
def test_same_direction_as_torchjd(ours, theirs, kind, num_tasks):
    jac = torch.as_tensor(jacobian(kind, num_tasks, dim=12, seed=num_tasks))
    expected = getattr(aggregation, theirs)()(jac)
    torch.testing.assert_close(create(ours, num_tasks).aggregate(jac), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("kind", "num_tasks"), CASES)
def test_exact_mgda_is_at_least_as_close_to_the_min_norm_point_as_torchjd(kind, num_tasks):
    jac = torch.as_tensor(jacobian(kind, num_tasks, dim=12, seed=num_tasks))
    ours = create("mgda", num_tasks, solver="qp").aggregate(jac)
    theirs = aggregation.MGDA()(jac)
    assert ours.norm() <= theirs.norm() * (1 + 1e-9) + 1e-12
