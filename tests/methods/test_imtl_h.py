"""Tests of IMTL-H (docs/methods.md §8): the shared asserts, then its defining properties."""

from __future__ import annotations

import pytest
import torch

from benchmark.methods import Needs, create
from benchmark.methods.imtl_g import IMTLG, imtl_g_weights
from tests.methods.shared import shared_asserts

test_shared = shared_asserts(
    "imtl_h", Needs.GRAMIAN,
    randomise_params=True,
)


def test_imtl_h_is_imtl_g_on_the_scaled_losses_gradients():
    torch.manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(3, 6, dtype=torch.float64)
    raw = torch.stack([((theta - t) ** 2).sum() * w for t, w in zip(targets, (0.1, 1.0, 10.0), strict=True)])
    method = create("imtl_h", 3)
    with torch.no_grad():
        method.scale.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
    scaled = method.transform_losses(raw)
    jac_raw = torch.stack([torch.autograd.grad(x, theta, retain_graph=True)[0] for x in raw])
    jac_scaled = torch.stack([torch.autograd.grad(x, theta, retain_graph=True)[0] for x in scaled])
    factors = method.scale.factors().double()[:, None]
    torch.testing.assert_close(jac_scaled, factors * jac_raw)

    alpha = method.gramian_weights(jac_scaled @ jac_scaled.T, raw.detach())
    torch.testing.assert_close(alpha, imtl_g_weights((factors * jac_raw) @ (factors * jac_raw).T))
    torch.testing.assert_close(method.aggregate(jac_raw), IMTLG(3).aggregate(factors * jac_raw))
    d_h, d_g = method.aggregate(jac_raw), IMTLG(3).aggregate(jac_raw)
    assert abs(d_h @ d_g / (d_h.norm() * d_g.norm())) == pytest.approx(1.0, abs=1e-12)

    scaled.sum().backward()
    assert method.scale.log_scale.grad is not None

