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

    default_grad_source = "rep_full"
