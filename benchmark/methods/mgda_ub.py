"""MGDA-UB: MGDA on the gradients w.r.t. the shared representation."""

from __future__ import annotations

from benchmark.methods.mgda import MGDA
from benchmark.methods.registry import register


@register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun, NeurIPS 2018, Sec. 3.3, Theorem 1): eq. 3 with ``grad_z L_t`` in place of the
    shared-parameter gradients, which minimises an upper bound of the MGDA objective.

    ``grad_source="rep_full"`` by default (the whole flattened batch x feature gradient, as the authors'
    code); ``rep_batchsum`` gives LibMTL's batch-summed variant.
    """

    def __init__(
        self,
        num_tasks: int,
        normalization: str = "none",
        solver: str = "pgd",
        max_iter: int = 250,
        tol: float = 1e-5,
        official_two_point_clip: bool = False,
        grad_source: str = "rep_full",
        head_weighting: str = "own",
    ) -> None:
        super().__init__(
            num_tasks,
            normalization=normalization,
            solver=solver,
            max_iter=max_iter,
            tol=tol,
            official_two_point_clip=official_two_point_clip,
            grad_source=grad_source,
            head_weighting=head_weighting,
        )
