"""The aligning transform of Aligned-MTL on the ``[T, T]`` Gramian, by float64 eigendecomposition
(docs/methods.md §14)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.hparams import choice

SCALE_MODES = ("min", "median", "rmse")


def official_rank_tol(num_tasks: int) -> float:
    """The official code's relative rank threshold ``T eps(float32)`` (it runs in float32)."""
    return num_tasks * torch.finfo(torch.float32).eps


def aligned_mtl_basis(gramian: Tensor, scale_mode: str = "min",
                      rank_tol: float | None = None) -> tuple[Tensor, Tensor]:
    """``(B, lambda_R)``: the aligning matrix ``B = sigma V_R Lambda_R^{-1/2} V_R^T`` and the kept eigenvalues.

    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task Learning", CVPR
    2023, the aligning transform of its method section, in the official solver's form: ``M = V Lambda V^T``
    by ``eigh`` in float64; the eigenpairs with ``lambda > lambda_max rank_tol`` are kept (rank ``R``; ``None``:
    the official ``T eps(float32)``, which drops a task whose gradient is ~1e-4 of another's); ``sigma^2`` is the
    smallest kept eigenvalue (``min``), their median (``median``, the lower one for an even ``R``, as the official
    ``torch.median``) or their mean (``rmse``). The aligned gradients ``G^ = B G`` have the Gramian
    ``B M B^T = sigma^2 V_R V_R^T``: their non-zero singular values all equal ``sigma`` (condition number 1).
    A zero Gramian gives ``B = 0``. On the CPU (one transfer).
    """
    choice("AlignedMTL", "scale_mode", scale_mode, SCALE_MODES)
    m = gramian.detach().double().cpu()
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"AlignedMTL: expected a square [T, T] Gramian, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("AlignedMTL: the Gramian has non-finite entries")
    vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    tol = vals.max() * (official_rank_tol(m.shape[0]) if rank_tol is None else rank_tol)
    keep = vals > tol
    vals, vecs = vals[keep].flip(0), vecs[:, keep].flip(1)
    if len(vals) == 0:
        return torch.zeros_like(m).to(gramian.device), vals.to(gramian.device)
    sigma_sq = {"min": vals.min, "median": vals.median, "rmse": vals.mean}[scale_mode]()
    basis = (sigma_sq.sqrt() * vecs / vals.sqrt()) @ vecs.T
    return basis.to(gramian.device), vals.to(gramian.device)
