"""Record FAMO's Cityscapes trainer step by step (tests/reference/README.md; docs/protocols.md P4).

Usage: python record.py <FAMO work tree> <method> <out.json> <fixture root> <epochs> <threads> [<max steps>]
[--gramian]

Runs <work tree>/experiments/cityscapes/trainer.py unmodified as ``__main__`` (cwd = the work tree, seed 42,
batch 2, CPU, ``torch.set_num_threads(threads)``); with <max steps> the record is written, and the process
ends, right after that many optimizer steps. Only objects are wrapped from outside; no reference file is edited
and no reference code is copied here:

* the dataset's module-level ``random`` / ``torch.rand`` (augmentation draws) and ``Cityscapes.__getitem__``
  (the sample order and per-map sums);
* ``WeightMethods.backward``: the losses, the returned weights and, with ``--gramian``, the float64 Gramian of
  the per-task gradients of the shared parameters (``torch.autograd.grad`` before the method runs; it touches
  neither ``.grad`` nor any RNG; two extra backward passes and a 0.7 GB float64 copy, more than half a step's CPU
  time); ``NashMTL.solve_optimization`` (its input, normalisation factor and result);
* ``PCGrad._project_conflicting`` + the module's ``random.shuffle`` (the projection orders), ``CAGrad.cagrad`` and
  ``scipy.optimize.minimize`` (its Gramian and SLSQP weights), ``MinNormSolver.find_min_norm_element`` (MGDA's
  Gramian of the vectors it is given);
* ``torch.optim.Adam.step`` (gradient norms of shared / head parameters as applied, update norm, lr),
  ``StepLR`` (arguments, lr), ``utils.delta_fn`` (the per-epoch test mIoU, pixAcc, abs err, rel err).

The process CPU seconds (all threads) of each step and test pass go to stderr and to the record's ``cpu``.

The trainer's ``test_dataset.next()`` (PyTorch < 1.13 iterators) is given by
``tests.reference_shims.install_dataloader_next_shim``. The initial parameters are replaced, right after the
reference builds ``SegNetMtan``, by ``tests.reference_replay.recipe_``, imported from this repository.
"""
import json
import math
import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import torch

with_gramian = "--gramian" in sys.argv
args = [a for a in sys.argv if a != "--gramian"]
ref, method, out_path, root = Path(args[1]), args[2], Path(args[3]).resolve(), args[4]
epochs, threads = int(args[5]), int(args[6])
max_steps = int(args[7]) if len(args) > 7 else None
torch.set_num_threads(threads)
sys.path.insert(0, str(ref))
sys.path.append(str(Path(__file__).resolve().parents[4]))  # this repository, after the reference's packages

import experiments.cityscapes.data as data_mod  # noqa: E402
import experiments.cityscapes.models as models_mod  # noqa: E402
import experiments.cityscapes.utils as utils_mod  # noqa: E402
import methods.min_norm_solvers as mns_mod  # noqa: E402
import methods.weight_methods as wm_mod  # noqa: E402

from tests.reference_hooks import recipe_on_init, record_samples, record_solver_inputs  # noqa: E402
from tests.reference_shims import install_dataloader_next_shim  # noqa: E402

install_dataloader_next_shim()
rec = {"steps": [], "epochs": [], "samples": [], "lr_per_scheduler_step": [], "cpu": []}
_last_cpu = [time.process_time()]


def cpu_mark(what: str) -> None:
    """Record and print the process CPU seconds since the previous mark."""
    now = time.process_time()
    rec["cpu"].append({"what": what, "seconds": round(now - _last_cpu[0], 3)})
    print(f"cpu {what}: {now - _last_cpu[0]:.2f} s", file=sys.stderr, flush=True)
    _last_cpu[0] = now


state = {"model": None, "draws": [], "shuffles": None, "step": {}}
recipe_on_init(models_mod.SegNetMtan, state)
record_samples(data_mod, data_mod.Cityscapes, rec, state)
record_solver_inputs(wm_mod, mns_mod, state)
_orig_solve = wm_mod.NashMTL.solve_optimization


def _solve(self, gtg):
    alpha = _orig_solve(self, gtg)
    state["step"]["nash"] = {"gtg": np.asarray(gtg, dtype=np.float64).tolist(),
                             "normalization_factor": float(np.asarray(self.normalization_factor).item()),
                             "alpha": [float(v) for v in alpha]}
    return alpha


wm_mod.NashMTL.solve_optimization = _solve
_orig_backward = wm_mod.WeightMethods.backward


def _backward(self, losses, **kw):
    cpu_mark(f"data + forward + losses, step {len(rec['steps']) + 1}")
    state["shuffles"] = None
    state["step"] = {}
    if with_gramian:
        shared = kw["shared_parameters"]
        flat = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]).double()
                for loss in losses]
        state["step"]["gramian"] = (torch.stack(flat) @ torch.stack(flat).T).tolist()
        del flat
        cpu_mark(f"recorder's Gramian, step {len(rec['steps']) + 1}")
    loss, extra = _orig_backward(self, losses, **kw)
    w = (extra or {}).get("weights")
    state["step"].update({"losses": [float(v) for v in losses.detach()],
                          "weights": None if w is None else [float(v) for v in torch.as_tensor(w).flatten()],
                          "pcgrad_orders": state["shuffles"]})
    return loss, extra


wm_mod.WeightMethods.backward = _backward


def dump():
    """Write the record with the model's final state."""
    model = state["model"]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    rec["final"] = {
        "param_norms": {n: float(p.detach().double().norm()) for n, p in model.named_parameters()},
        "running_mean_norm": math.sqrt(sum(float(m.running_mean.double().square().sum()) for m in bns)),
        "running_var_norm": math.sqrt(sum(float(m.running_var.double().square().sum()) for m in bns)),
        "num_batches_tracked": int(bns[0].num_batches_tracked),
    }
    rec["batchnorm"] = {"count": len(bns), "momentum": sorted({m.momentum for m in bns}),
                        "eps": sorted({m.eps for m in bns}), "affine": sorted({m.affine for m in bns}),
                        "track_running_stats": sorted({m.track_running_stats for m in bns})}
    rec["param_count"] = sum(p.numel() for p in model.parameters())
    rec["param_shapes"] = {n: list(p.shape) for n, p in model.named_parameters()}
    rec["buffer_names"] = [n for n, _ in model.named_buffers()]
    rec["method"], rec["argv"], rec["threads"], rec["gramian"] = method, trainer_argv, threads, with_gramian
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(rec))
    print("wrote", out_path, len(rec["steps"]), "steps")


class RecAdam(torch.optim.Adam):
    def step(self, closure=None):
        by_id = {id(p): n for n, p in state["model"].named_parameters()}
        params = self.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]

        def norm(head):
            return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params
                                 if p.grad is not None and ("pred" in by_id[id(p)]) == head))

        gsh, ghd, lr = norm(False), norm(True), self.param_groups[0]["lr"]
        out = super().step(closure)
        upd = math.sqrt(sum(float((p.detach().double() - b.double()).square().sum()) for p, b in zip(params, before)))
        rec["steps"].append({**state["step"], "grad_norm_shared": gsh, "grad_norm_heads": ghd, "update_norm": upd,
                             "lr": lr})
        cpu_mark(f"method + backward + Adam, step {len(rec['steps'])}")
        if len(rec["steps"]) == max_steps:
            dump()
            os._exit(0)
        return out


torch.optim.Adam = RecAdam


class RecStepLR(torch.optim.lr_scheduler.StepLR):
    def __init__(self, optimizer, step_size, gamma=0.1, **kw):
        rec["scheduler"] = {"class": "StepLR", "step_size": step_size, "gamma": gamma}
        super().__init__(optimizer, step_size, gamma, **kw)

    def step(self, *a, **kw):
        super().step(*a, **kw)
        rec["lr_per_scheduler_step"].append(self.get_last_lr()[0])


torch.optim.lr_scheduler.StepLR = RecStepLR
_orig_delta = utils_mod.delta_fn


def _delta(a):
    cpu_mark(f"test pass after step {len(rec['steps'])}")
    rec["epochs"].append({"test_metrics": [float(v) for v in a], "after_step": len(rec["steps"])})
    return _orig_delta(a)


utils_mod.delta_fn = _delta

trainer_argv = sys.argv = ["trainer.py", "--data-path", root, "--method", method, "--n-epochs", str(epochs),
                           "--batch-size", "2", "--seed", "42"]
os.chdir(ref)
Path("save").mkdir(exist_ok=True)
runpy.run_path(str(ref / "experiments/cityscapes/trainer.py"), run_name="__main__")

dump()
