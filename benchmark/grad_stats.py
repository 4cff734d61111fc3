"""Gradient-conflict statistics from the ``T x T`` Gramian ``G G^T`` of the per-task gradients.

The norms ``||g_t|| = sqrt(M_tt)`` and cosines ``cos(g_a, g_b) = M_ab / (||g_a|| ||g_b||)`` are the quantities
PCGrad (Yu et al., NeurIPS 2020, Def. 1) calls conflict; the Gramian is the object the engine already has for
Gramian methods, so they cost nothing more there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NORM_PREFIX = "grad_norm/"
COS_PREFIX = "grad_cos/"


def cos_key(a: str, b: str) -> str:
    return f"{COS_PREFIX}{a}/{b}"


def gradient_stats(gramian: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per-task gradient norms (``grad_norm/<task>``) and the cosine of every task pair ``a < b`` in task order
    (``grad_cos/<a>/<b>``). A cosine involving a zero gradient is undefined and left out."""
    if gramian.shape != (len(names), len(names)):
        raise ValueError(f"gramian of shape {tuple(gramian.shape)} does not match the {len(names)} tasks {names}")
    gram = gramian.detach().double().cpu()
    norms = gram.diagonal().clamp_min(0).sqrt()
    out = {f"{NORM_PREFIX}{t}": float(n) for t, n in zip(names, norms)}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if norms[a] > 0 and norms[b] > 0:
                cos = (gram[a, b] / (norms[a] * norms[b])).clamp(-1.0, 1.0)
                out[cos_key(names[a], names[b])] = float(cos)
    return out


def cosine_matrix(stats: dict[str, float], names: Sequence[str]) -> Tensor:
    """The symmetric ``T x T`` cosine matrix (ones on the diagonal, NaN where unknown) from ``grad_cos/`` stats."""
    out = torch.full((len(names), len(names)), float("nan"), dtype=torch.float64)
    out.fill_diagonal_(1.0)
    for a, ta in enumerate(names):
        for b, tb in enumerate(names):
            value = stats.get(cos_key(ta, tb))
            if value is not None:
                out[a, b] = out[b, a] = value
    return out
