"""Aligned-MTL: align the task gradients to an orthogonal, equal-norm system, in Gram form (docs/methods.md §14)."""

from __future__ import annotations

from torch import Tensor

from benchmark.methods.base import Method, Needs
from benchmark.methods.hparams import choice, number
from benchmark.methods.registry import register
from benchmark.methods.solvers.alignment import SCALE_MODES, aligned_mtl_basis

UPDATE_SCALES = ("native", "sum", "mean")


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

    ``rank_tol`` (None: the official ``T eps(float32)``, relative to ``lambda_max``) decides which eigenpairs
    are kept; the official one drops a task whose gradient norm is ~1e-4 of another's even though float64 resolves
    it. ``stats()["rank_dropped"]`` counts the eigenpairs dropped on each step (``T - R``).
    """

    needs = Needs.GRAMIAN

    def __init__(self, num_tasks: int, scale_mode: str = "min", update_scale: str = "native",
                 rank_tol: float | None = None, grad_source: str = "params", head_weighting: str = "own") -> None:
        super().__init__(num_tasks, grad_source=grad_source, head_weighting=head_weighting)
        self.scale_mode = choice(self, "scale_mode", scale_mode, SCALE_MODES)
        self.update_scale = choice(self, "update_scale", update_scale, UPDATE_SCALES)
        self.rank_tol = number(self, "rank_tol", rank_tol, low=0, high=1, open_high=True, none=True)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        basis, kept = aligned_mtl_basis(gramian, self.scale_mode, self.rank_tol)
        weights = basis.sum(dim=1)
        if self.update_scale == "mean":
            weights = weights / self.num_tasks
        self.step_stats = {"rank": float(len(kept)), "rank_dropped": float(gramian.shape[0] - len(kept))}
        if len(kept):
            self.step_stats["gramian_condition"] = float(kept[0] / kept[-1])
        self.last_weights = weights.detach()
        return self.last_weights
