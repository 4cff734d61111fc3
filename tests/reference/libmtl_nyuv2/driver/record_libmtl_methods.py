"""Record LibMTL's weighting classes (``LibMTL/weighting/*.py``, unmodified) on a small fixed HPS problem.

Usage: python record_libmtl_methods.py --libmtl-root <LibMTL checkout> --out methods.json [--steps 25]

Contains no LibMTL code. The model is LibMTL's own composition of its ``HPS`` architecture with a weighting class
(as ``LibMTL.Trainer._prepare_model`` builds it, rep_grad False, multi_input False, CPU): encoder
``nn.Linear(16, 2, bias=False)``, one ``nn.Linear(2, 1, bias=False)`` decoder per task (rank 2 < 3 tasks: the
targets cannot all be met and the task gradients keep conflicting), initial weights and data
from ``torch.Generator().manual_seed(0)``; task ``t``'s loss is ``mean((f_t(x) - x @ v_t)^2)`` on a new batch
``x`` [32, 16] each step (targets ``v_t`` fixed). Each step is the trainer's: ``zero_grad(set_to_none=False)``,
``model.backward(losses, **weight_args)`` with LibMTL's default ``weight_args`` for the method
(``LibMTL.config.prepare_args``), SGD (lr 0.05, every model parameter, IMTL's ``loss_scale`` included), and for
FAMO the after-step forward and ``update_w``. Recorded per step: the losses, the float64 Gramian of the
per-task encoder gradients (``torch.autograd.grad`` before the method runs), the weights the method returns
(FAMO: ``z / (c D)`` from its logits before the step), the gradients it leaves on the encoder and on each
decoder, PCGrad's ``random.shuffle`` orders, IMTL's ``loss_scale`` and FAMO's after-step losses.
``torch_geometric`` (imported by trainer.py, used only by bilevel methods) is stubbed and ``torch.symeig``
(removed from torch) is provided by ``torch.linalg.eigh`` for Aligned_MTL.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import types
from pathlib import Path

import torch

METHODS = ["EW", "MGDA", "PCGrad", "CAGrad", "IMTL", "Nash_MTL", "Aligned_MTL", "DB_MTL", "FAMO", "FairGrad"]
TASKS = ["segmentation", "depth", "normal"]
LR = 0.05
HIDDEN = 2


def run(method: str, steps: int) -> dict:
    import torch.nn.functional as F
    from LibMTL import weighting
    from LibMTL.architecture import HPS
    from LibMTL.config import LibMTL_args, prepare_args

    kwargs, _, _ = prepare_args(LibMTL_args.parse_args(["--weighting", method, "--arch", "HPS"]))
    g = torch.Generator().manual_seed(0)
    encoder = torch.nn.Linear(16, HIDDEN, bias=False)
    decoders = torch.nn.ModuleDict({t: torch.nn.Linear(HIDDEN, 1, bias=False) for t in TASKS})
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(HIDDEN, 16, generator=g) * 0.3)
        for t in TASKS:
            decoders[t].weight.copy_(torch.randn(1, HIDDEN, generator=g))
    targets = {t: torch.randn(16, generator=g) for t in TASKS}
    model_class = type("MTLmodel", (HPS, getattr(weighting, method)), {})
    model = model_class(task_name=TASKS, encoder_class=lambda: encoder, decoders=decoders, rep_grad=False,
                        multi_input=False, device=torch.device("cpu"))
    model.init_param()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    orders: list[list[int]] = []
    shuffle = random.shuffle

    def recorded_shuffle(x, *a, **k):
        shuffle(x, *a, **k)
        orders.append(list(x))

    random.shuffle = recorded_shuffle
    random.seed(0)

    def task_losses(x):
        preds = model(x)
        return torch.stack([F.mse_loss(preds[t][:, 0], x @ targets[t]) for t in TASKS])

    record = []
    try:
        for _ in range(steps):
            x = torch.randn(32, 16, generator=g)
            model.train()
            losses = task_losses(x)
            flat = [torch.autograd.grad(v, [encoder.weight], retain_graph=True)[0].flatten().double() for v in losses]
            gramian = torch.stack(flat) @ torch.stack(flat).T
            entry = {"losses": [float(v) for v in losses.detach()], "gramian": gramian.tolist()}
            if method == "FAMO" and hasattr(model, "w"):
                z = torch.softmax(model.w.detach(), -1)
                d = losses.detach() - model.min_losses + 1e-8
                entry["famo_weights"] = ((z / d) / (z / d).sum()).tolist()
            if method == "IMTL":
                entry["loss_scale"] = model.loss_scale.detach().tolist()
            orders.clear()
            optimizer.zero_grad(set_to_none=False)
            w = model.backward(losses, **kwargs["weight_args"])
            entry["weights"] = None if w is None else [float(v) for v in torch.as_tensor(w).reshape(-1)]
            entry["shared_grad"] = encoder.weight.grad.double().flatten().tolist()
            entry["head_grads"] = [decoders[t].weight.grad.double().flatten().tolist() for t in TASKS]
            if orders:
                entry["pcgrad_orders"] = [list(o) for o in orders]
            optimizer.step()
            if method == "FAMO":
                with torch.no_grad():
                    after = task_losses(x)
                model.update_w(after.detach())
                entry["losses_after"] = after.tolist()
            record.append(entry)
    finally:
        random.shuffle = shuffle
    return {"weight_args": kwargs["weight_args"], "steps": record}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--libmtl-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.libmtl_root)))
    sys.modules.setdefault("torch_geometric", types.ModuleType("torch_geometric"))
    torch.symeig = lambda m, eigenvectors=True: torch.linalg.eigh(m)  # torch.symeig raises since torch 2.0
    torch.manual_seed(0)
    out = {"problem": __doc__.split("\n\n")[2], "lr": LR, "steps": args.steps, "tasks": TASKS,
           "methods": {m: run(m, args.steps) for m in METHODS}}
    Path(args.out).write_text(json.dumps(out))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
