"""Seeded many-task gradient sets for the min-norm solver comparisons (tests/test_reference_mgda_ub_celeba.py)."""

from __future__ import annotations

import torch

GRADIENT_CASES = 6
MIXES = (0.0, 0.3, 0.6, 0.9, 0.3, 0.6)


def gradient_case(case: int, tasks: int = 40, batch: int = 16, dim: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grads [T, batch, dim], losses [T])`` in float32 from ``torch.Generator().manual_seed(1000 + case)``: per
    task a log-normal scale times a mix of one common and one task-own Gaussian direction."""
    g = torch.Generator().manual_seed(1000 + case)
    common = torch.randn(batch, dim, generator=g)
    scales = torch.exp(torch.randn(tasks, generator=g) * 0.5 * (case % 3 + 1))
    own = torch.randn(tasks, batch, dim, generator=g)
    grads = scales[:, None, None] * (MIXES[case] * common + (1 - MIXES[case]) * own)
    return grads, 0.05 + torch.rand(tasks, generator=g)
