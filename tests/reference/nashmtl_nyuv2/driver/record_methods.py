"""Record nash-mtl's weight methods (``methods/weight_methods.py``, unmodified) on a small fixed problem.

Usage: python record_methods.py <nash-mtl work tree> <out.json> [steps]

A float32 linear problem (seed 0): shared ``W`` [16, 8], per task a head ``h_t`` [8] and targets; the task
loss is ``mean((X W h_t - y_t)^2)`` on a new batch ``X`` [32, 16] each step. Each step calls the reference
``WeightMethods(<method>, n_tasks=3).backward(losses, shared_parameters=[W], task_specific_parameters=heads)``
(NashMTL with the trainer's defaults: ``update_weights_every=1, optim_niter=20``, hence ``max_norm=1.0``), then
SGD (lr 0.05). Recorded per step: the losses, the float64 Gramian of the per-task ``W`` gradients (computed
with ``torch.autograd.grad`` before the method runs), the weights the method returns, and the norm of the
gradient it leaves on ``W``. No reference code is copied here.
"""
import json
import sys
from pathlib import Path

import torch

ref, out = Path(sys.argv[1]), Path(sys.argv[2])
n_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 25
sys.path.insert(0, str(ref))
from methods.weight_methods import WeightMethods  # noqa: E402

T = 3


def run(method: str) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8, generator=g) * 0.3)
    heads = [torch.nn.Parameter(torch.randn(8, generator=g)) for _ in range(T)]
    true = [torch.randn(16, generator=g) for _ in range(T)]
    weights = WeightMethods(method, n_tasks=T, device=torch.device("cpu"))
    steps = []
    for _ in range(n_steps):
        x = torch.randn(32, 16, generator=g)
        losses = torch.stack([((x @ w @ heads[t] - x @ true[t]) ** 2).mean() for t in range(T)])
        flat = [torch.autograd.grad(loss, [w], retain_graph=True)[0].flatten().double() for loss in losses]
        gramian = torch.stack(flat) @ torch.stack(flat).T
        for p in [w, *heads]:
            p.grad = None
        _, extra = weights.backward(losses, shared_parameters=[w], task_specific_parameters=heads)
        returned = (extra or {}).get("weights")
        steps.append({"losses": [float(v) for v in losses.detach()], "gramian": gramian.tolist(),
                      "weights": None if returned is None else [float(v) for v in torch.as_tensor(returned)],
                      "shared_grad_norm": float(w.grad.double().norm())})
        with torch.no_grad():
            for p in [w, *heads]:
                p -= 0.05 * p.grad
    return steps


record = {"problem": __doc__.split("\n\n")[1], "steps": n_steps,
          "methods": {m: run(m) for m in ("ls", "mgda", "imtl", "nashmtl")}}
out.write_text(json.dumps(record))
print("wrote", out)
