"""Recording hooks shared by the MTAN-lineage reference drivers (nash-mtl NYUv2, FAMO Cityscapes): they wrap the
reference's own modules from outside, so no reference code enters this repository.

``state`` is the driver's dict: ``draws`` (this sample's augmentation draws), ``shuffles`` / ``order`` (PCGrad's
projection orders) and ``model`` (the built SegNet-MTAN).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from tests.reference_replay import recipe_


class RecordingRandom:
    """Stands in for a module's ``random``: ``randint`` draws are appended to ``state["draws"]``, each ``shuffle``'s
    result to ``state["shuffles"]`` as indices into ``state["order"]``."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def __getattr__(self, name: str):
        return getattr(random, name)

    def randint(self, a: int, b: int) -> int:
        value = random.randint(a, b)
        self.state["draws"].append(value)
        return value

    def shuffle(self, x: list) -> None:
        random.shuffle(x)
        self.state["shuffles"].append([self.state["order"][id(e)] for e in x])


class RecordingTorch:
    """Stands in for a module's ``torch``: each ``torch.rand`` draw is appended to ``state["draws"]``."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def rand(self, *args, **kwargs) -> torch.Tensor:
        value = torch.rand(*args, **kwargs)
        self.state["draws"].append(float(value))
        return value


def record_samples(data_mod, dataset_cls: type, rec: dict, state: dict[str, Any]) -> None:
    """Record every sample ``dataset_cls`` returns (split, index, its augmentation draws, per-map sums) into
    ``rec["samples"]``; the data module's ``random`` and ``torch`` draws are recorded as they happen."""
    data_mod.random = RecordingRandom(state)
    data_mod.torch = RecordingTorch(state)
    original = dataset_cls.__getitem__

    def getitem(self, index):
        state["draws"] = []
        out = original(self, index)
        rec["samples"].append({"split": "train" if self.train else "test", "index": int(index),
                               "draws": list(state["draws"]), "sums": [float(t.double().sum()) for t in out]})
        return out

    dataset_cls.__getitem__ = getitem


def recipe_on_init(model_cls: type, state: dict[str, Any]) -> None:
    """Right after ``model_cls`` builds itself, overwrite its parameters with :func:`recipe_` (keyed by the
    reference's names) and keep the model in ``state["model"]``."""
    original = model_cls.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        recipe_(dict(self.named_parameters()))
        state["model"] = self

    model_cls.__init__ = init


def record_solver_inputs(wm_mod, mns_mod, state: dict[str, Any]) -> None:
    """Wrap the nash-mtl-lineage ``weight_methods`` / ``min_norm_solvers`` modules to record, per step into
    ``state["step"]``: PCGrad's projection orders (``state["shuffles"]``, via its module's ``random``), CAGrad's SLSQP
    weights (``cagrad_w``) and Gramian, and the Gramian of the vectors MGDA's min-norm solver is given
    (``method_gramian``). Nothing the methods compute is changed."""
    wm_mod.random = RecordingRandom(state)
    project, minimize, cagrad = wm_mod.PCGrad._project_conflicting, wm_mod.minimize, wm_mod.CAGrad.cagrad
    min_norm = mns_mod.MinNormSolver.find_min_norm_element

    def project_(self, grads, *args, **kwargs):
        state["order"] = {id(e): i for i, e in enumerate(grads)}
        state["shuffles"] = []
        return project(self, grads, *args, **kwargs)

    def minimize_(*args, **kwargs):
        res = minimize(*args, **kwargs)
        state["step"]["cagrad_w"] = [float(v) for v in res.x]
        return res

    def cagrad_(self, grads, *args, **kwargs):
        state["step"]["method_gramian"] = grads.t().mm(grads).double().tolist()
        return cagrad(self, grads, *args, **kwargs)

    def min_norm_(vecs):
        state["step"]["method_gramian"] = [[sum(float(torch.dot(a, b)) for a, b in zip(u, v)) for v in vecs]
                                           for u in vecs]
        return min_norm(vecs)

    wm_mod.PCGrad._project_conflicting, wm_mod.minimize, wm_mod.CAGrad.cagrad = project_, minimize_, cagrad_
    mns_mod.MinNormSolver.find_min_norm_element = staticmethod(min_norm_)
