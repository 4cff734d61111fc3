"""Aligned-MTL: align the task gradients to an orthogonal, equal-norm system, in Gram form (docs/methods.md §14)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.registry import register

SCALE_MODES = ("min", "median", "rmse")
UPDATE_SCALES = ("native", "sum", "mean")


def aligned_mtl_basis(gramian: Tensor, scale_mode: str = "min") -> tuple[Tensor, Tensor]:
    """``(B, lambda_R)``: the aligning matrix ``B = sigma V_R Lambda_R^{-1/2} V_R^T`` and the kept eigenvalues.

    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task Learning", CVPR
    2023, the aligning transform of its method section, in the official solver's form: ``M = V Lambda V^T``
    by ``eigh`` in float64; the eigenpairs with ``lambda > lambda_max T eps(float32)`` are kept (rank ``R``; the
    official threshold); ``sigma^2`` is the smallest kept eigenvalue (``min``), their median (``median``, the
    lower one for an even ``R``, as the official ``torch.median``) or their mean (``rmse``). The aligned
    gradients ``G^ = B G`` have the Gramian ``B M B^T = sigma^2 V_R V_R^T``: their non-zero singular values all
    equal ``sigma`` (condition number 1). A zero Gramian gives ``B = 0``. On the CPU (one transfer).
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"AlignedMTL: scale_mode={scale_mode!r} is not one of {SCALE_MODES}")
    m = gramian.detach().double().cpu()
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"AlignedMTL: expected a square [T, T] Gramian, got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("AlignedMTL: the Gramian has non-finite entries")
    vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    tol = vals.max() * m.shape[0] * torch.finfo(torch.float32).eps
    keep = vals > tol
    vals, vecs = vals[keep].flip(0), vecs[:, keep].flip(1)
    if len(vals) == 0:
        return torch.zeros_like(m).to(gramian.device), vals.to(gramian.device)
    sigma_sq = {"min": vals.min, "median": vals.median, "rmse": vals.mean}[scale_mode]()
    basis = (sigma_sq.sqrt() * vecs / vals.sqrt()) @ vecs.T
    return basis.to(gramian.device), vals.to(gramian.device)


def aligned_mtl_weights(gramian: Tensor, scale_mode: str = "min") -> Tensor:
    """``alpha = B 1``: the weights with ``alpha @ G = sum_t g^_t`` (the official code's sum of aligned gradients)."""
    return aligned_mtl_basis(gramian, scale_mode)[0].sum(dim=1)


@register("aligned_mtl")
class AlignedMTL(Method):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, arXiv
    2305.19000, the aligned update of its method section) by :func:`aligned_mtl_basis` on the Gramian.

    docs/methods.md §14 Recommended, the official form: ``scale_mode="min"``, ``update_scale="native"`` (= ``sum``:
    ``alpha = B 1``; ``mean`` is torchjd's preference vector ``1/T``, a factor ``T`` smaller), ``eigh`` in
    float64 with the official rank threshold, heads get their own gradient. Aligned-MTL-UB is
    ``grad_source="rep_full"`` / ``"rep_batchsum"`` (LibMTL's ``--rep_grad``). ``stats()`` adds the rank ``R`` and the
    condition number ``lambda_max / lambda_min`` of the kept spectrum of ``M`` (``gramian_condition``).
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, scale_mode: str = "min", update_scale: str = "native",
                 grad_source: str = "params", head_weighting: str = "own") -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"AlignedMTL: scale_mode={scale_mode!r} is not one of {SCALE_MODES}")
        if update_scale not in UPDATE_SCALES:
            raise ValueError(f"AlignedMTL: update_scale={update_scale!r} is not one of {UPDATE_SCALES}")
        self.scale_mode, self.update_scale = scale_mode, update_scale

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        basis, kept = aligned_mtl_basis(gramian, self.scale_mode)
        weights = basis.sum(dim=1)
        if self.update_scale == "mean":
            weights = weights / self.num_tasks
        self.step_stats = {"rank": float(len(kept))}
        if len(kept):
            self.step_stats["gramian_condition"] = float(kept[0] / kept[-1])
        self.last_weights = weights.detach()
        return self.last_weights

    def hparams(self) -> dict:
        return {"scale_mode": self.scale_mode, "update_scale": self.update_scale, **super().hparams()}
