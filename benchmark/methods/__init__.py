"""Multi-task optimization methods: pure tensor maths, one file each, registered by name.

Importing this package registers every built-in; plugins are found through the ``mtobench.methods``
entry-point group.
"""

from benchmark.methods import (  # noqa: F401  (registration)
    aligned_mtl,
    cagrad,
    cso,
    db_mtl,
    dwa,
    ew,
    fairgrad,
    famo,
    fixed,
    graddrop,
    gradnorm,
    gradvac,
    imtl_g,
    imtl_h,
    imtl_l,
    mgda,
    mgda_ub,
    nash_mtl,
    pcgrad,
    rlw,
    si,
    upgrad,
    uw,
)
from benchmark.methods.base import GRAD_SOURCES, HEAD_WEIGHTINGS, Method, Needs, StepContext
from benchmark.methods.registry import ENTRY_POINT_GROUP, available, create, get, register

__all__ = [
    "ENTRY_POINT_GROUP",
    "GRAD_SOURCES",
    "HEAD_WEIGHTINGS",
    "Method",
    "Needs",
    "StepContext",
    "available",
    "create",
    "get",
    "register",
]
