"""Reproduction presets (docs/methods.md §0): the hyper-parameters where public implementations disagree.

``PRESETS[preset][method]`` holds the constructor arguments that make ``method`` behave like the reference
codebase ``preset``. A method without an entry behaves the same under every preset (its defaults). Explicit
hyper-parameters always win over the preset (:func:`resolve`). Only arguments the constructors expose appear
here; ``tests/test_presets.py`` builds every entry, so a misspelled name fails.

* ``nashmtl``: the nash-mtl / FAMO / FairGrad lineage (AvivNavon/nash-mtl), behind the SegNet-MTAN tables.
* ``libmtl``: LibMTL.
* ``cagrad``: the CAGrad repo (Cranial-XIX/CAGrad).
* ``official``: each method's own authors' code.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "nashmtl": {
        # §0.2, §7: MGDA applied as loss weights (heads weighted), summing to T (nash-mtl's sol * T).
        "mgda": {"head_weighting": "weighted", "weight_sum": "tasks"},
        # §0.2, §8: nash-mtl IMTLG is applied as loss weights.
        "imtl_g": {"head_weighting": "weighted"},
        # §0.2, §13: Nash-MTL weights the losses, so the heads are weighted.
        "nash_mtl": {"head_weighting": "weighted"},
        # §4, §20: DWA iteration-window variant (window 25, loss mean = native scale of mode "window").
        "dwa": {"mode": "window", "window": 25},
    },
    "libmtl": {
        # §0.5, §7: MGDA-UB on the batch-summed representation gradient.
        "mgda_ub": {"grad_source": "rep_batchsum"},
        # §3: s initialised at -0.5 and trained at the model's (main) learning rate.
        "uw": {"init": -0.5, "lr": None},
        # §4: LibMTL DWA is the epoch-based rule (the default, stated for the record).
        "dwa": {"mode": "epoch"},
        # §8, §20: LibMTL's IMTL is IMTL-H in rep-grad mode (batch-summed, §0.5).
        "imtl_h": {"grad_source": "rep_batchsum"},
        # §12: c = 0.5 and no ×T ("mean" keeps d).
        "cagrad": {"c": 0.5, "update_scale": "mean"},
        # §18: backward of sum_t w_t L_t (heads weighted), no ×T, no clipping.
        "fairgrad": {"head_weighting": "weighted", "update_scale": "mean", "max_norm": None},
    },
    "cagrad": {
        # §12: the CAGrad repo's run.sh c = 0.4 with the ×T sum scale (the defaults, stated for the record).
        "cagrad": {"c": 0.4, "update_scale": "native"},
        # §3: MTAN/CAGrad initialise s at -0.5 as a model parameter (main optimizer).
        "uw": {"init": -0.5, "lr": None},
        # §10: the CAGrad-lineage parameter-level GradDrop (this implementation's form); eps 1e-8 per graddrop.py.
        "graddrop": {"eps": 1e-8},
    },
    "official": {
        # §0.2, §7: official MGDA back-propagates sum_t alpha_t L_t once (heads weighted).
        "mgda": {"head_weighting": "weighted"},
        # §0.2, §7, §20: likewise for MGDA-UB, with the CelebA run's 'loss+' normalisation.
        "mgda_ub": {"head_weighting": "weighted", "normalization": "loss+"},
        # §0.6, §15: the FAMO repo's after-step forward pass updates the BN running statistics.
        "famo": {"bn_update": True},
    },
}


def resolve(preset: str | None, method: str, hparams: dict) -> dict:
    """The preset's hyper-parameters for ``method``, overridden by the explicit ``hparams`` (a new dict)."""
    if preset is None:
        return dict(hparams)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
    return {**PRESETS[preset].get(method, {}), **hparams}
