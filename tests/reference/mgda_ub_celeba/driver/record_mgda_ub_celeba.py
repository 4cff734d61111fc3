"""Records, from intel-isl/MultiObjectiveOptimization, the parts of its CelebA MGDA-UB setting that run here, for
tests/test_reference_mgda_ub_celeba.py.

Contains no reference code: it imports ``multi_task/min_norm_solvers.py`` and ``multi_task/models/
multi_faces_resnet.py`` from ``--reference``. Shims (applied from outside, for 0.4-era code on torch 2.x): ``x[0]``
of a 0-dim tensor returns ``x.item()``; ``torch.dot`` flattens its arguments.

Recorded: (1) the CelebA network's parameter shapes and BatchNorm settings (``ResNet(BasicBlock, [2, 2, 2, 2])``
and one ``FaceAttributeDecoder`` per attribute, as ``model_selector.get_model`` builds them); (2) for seeded
40-task representation-gradient sets (recipe :func:`tests.fixtures_min_norm.gradient_case`), the reference's
``gradient_normalizers`` for each normalisation type and the weights of ``MinNormSolver.find_min_norm_element``
(projected gradient, what ``train_multi_task.py`` calls) and ``find_min_norm_element_FW``; (3) ``forward.json``:
the network with :func:`tests.reference_replay.linear_recipe_` weights (keyed by the reference names) in train mode
on a seeded 4-image batch (:data:`FORWARD_SEED`): the representation's shape, sum and sum of squares, per attribute
the sum of its log-softmax output and its ``losses.nll`` loss on seeded labels, and the representation gradient's
norm of the summed losses.

Usage: python record_mgda_ub_celeba.py --reference <MultiObjectiveOptimization> [--reference-commit <sha>] --out <dir>
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))
from tests.fixtures_min_norm import GRADIENT_CASES, gradient_case  # noqa: E402
from tests.reference_replay import linear_recipe_  # noqa: E402
from tests.reference_shims import install_legacy_tensor_shims  # noqa: E402

NORMALIZATIONS = ("l2", "loss", "loss+", "none")
FORWARD_SEED = 7
"""torch.Generator seed of the forward record's batch: randn(4, 3, 64, 64), then randint(0, 2, (4, 40)) labels."""


def forward_record(model: dict, nll) -> dict:
    named = {f"{k}.{n}": p for k, m in model.items() for n, p in m.named_parameters()}
    linear_recipe_(named)
    g = torch.Generator().manual_seed(FORWARD_SEED)
    x = torch.randn(4, 3, 64, 64, generator=g)
    labels = torch.randint(0, 2, (4, 40), generator=g)
    for m in model.values():
        m.train()
    rep, _ = model["rep"](x, None)
    z = rep.detach().requires_grad_()
    outs = [model[str(t)](z, None)[0] for t in range(40)]
    losses = [nll(out, labels[:, t]) for t, out in enumerate(outs)]
    (grad,) = torch.autograd.grad(torch.stack(losses).sum(), z)
    r = rep.detach().double()
    return {"seed": FORWARD_SEED, "rep_shape": list(rep.shape), "rep_sum": float(r.sum()),
            "rep_sq": float(r.square().sum()), "log_prob_sums": [float(o.detach().double().sum()) for o in outs],
            "losses": [float(v) for v in losses], "rep_grad_norm": float(grad.double().norm())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference-commit", help="the snapshot's commit, when --reference is not a git work tree")
    args = ap.parse_args()
    install_legacy_tensor_shims()
    sys.path.insert(0, str(args.reference / "multi_task"))
    from losses import nll
    from min_norm_solvers import MinNormSolver, gradient_normalizers
    from models.multi_faces_resnet import BasicBlock, FaceAttributeDecoder, ResNet

    model = {"rep": ResNet(BasicBlock, [2, 2, 2, 2])}
    model.update({str(t): FaceAttributeDecoder() for t in range(40)})
    named = {f"{k}.{n}": p for k, m in model.items() for n, p in m.named_parameters()}
    bns = [x for x in model["rep"].modules() if isinstance(x, torch.nn.BatchNorm2d)]
    network = {
        "param_shapes": {n: list(p.shape) for n, p in named.items() if n.startswith(("rep.", "0."))},
        "rep_param_count": sum(p.numel() for n, p in named.items() if n.startswith("rep.")),
        "head_param_count": sum(p.numel() for n, p in named.items() if n.startswith("0.")),
        "batchnorm": {"count": len(bns), "momentum": sorted({m.momentum for m in bns}),
                      "eps": sorted({m.eps for m in bns}), "affine": sorted({m.affine for m in bns}),
                      "track_running_stats": sorted({m.track_running_stats for m in bns})},
        "rep_output_shape": list(model["rep"](torch.zeros(2, 3, 64, 64), None)[0].shape),
    }
    cases = []
    for case in range(GRADIENT_CASES):
        grads, losses = gradient_case(case)
        tasks = list(range(grads.shape[0]))
        entry = {"case": case, "normalizations": {}}
        for kind in NORMALIZATIONS:
            vecs = {t: [grads[t]] for t in tasks}
            gn = gradient_normalizers(vecs, {t: float(losses[t]) for t in tasks}, kind)
            scaled = [[grads[t] / gn[t]] for t in tasks]
            sol, cost = MinNormSolver.find_min_norm_element(scaled)
            sol_fw, cost_fw = MinNormSolver.find_min_norm_element_FW(scaled)
            entry["normalizations"][kind] = {"normalizers": [float(gn[t]) for t in tasks],
                                             "weights": [float(v) for v in sol], "min_norm": float(cost),
                                             "weights_fw": [float(v) for v in sol_fw], "min_norm_fw": float(cost_fw)}
        cases.append(entry)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.reference, capture_output=True,
                            text=True).stdout.strip() or args.reference_commit
    if not commit:
        raise SystemExit(f"{args.reference} is not a git work tree: pass --reference-commit")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "solver_network.json").write_text(
        json.dumps({"network": network, "cases": cases}, separators=(",", ":")) + "\n")
    (args.out / "forward.json").write_text(json.dumps(forward_record(model, nll), indent=1) + "\n")
    header = {
        "repository": "https://github.com/intel-isl/MultiObjectiveOptimization",
        "commit": commit,
        "entry_point": "multi_task/min_norm_solvers.py (MinNormSolver, gradient_normalizers) and "
                       "multi_task/models/multi_faces_resnet.py (ResNet, BasicBlock, FaceAttributeDecoder), imported",
        "command": "python tests/reference/mgda_ub_celeba/driver/record_mgda_ub_celeba.py "
                   f"--reference <MultiObjectiveOptimization> --reference-commit {commit} --out <this folder>",
        "driver": "tests/reference/mgda_ub_celeba/driver/record_mgda_ub_celeba.py (shims in its docstring; no "
                  "reference code)",
        "inputs": f"tests.fixtures_min_norm.gradient_case(c) for c < {GRADIENT_CASES}: 40 tasks' float32 gradients "
                  "w.r.t. a 16 x 2048 representation and 40 losses, from torch.Generator seeds",
        "forward": "forward.json: the network on a seeded batch (FORWARD_SEED in the driver), weights "
                   "tests.reference_replay.linear_recipe_ keyed by the reference names (rep.*, <attribute index>.*)",
        "not_run": "the CelebA trainer: its loader needs the CelebA PNG release through scipy.misc.imread/imresize, "
                   "removed from SciPy (imresize's min-max byte scaling cannot be run, only re-implemented)",
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "device": "cpu"},
    }
    (args.out / "header.json").write_text(json.dumps(header, indent=1) + "\n")
    print(f"{len(cases)} solver cases -> {args.out}")


if __name__ == "__main__":
    main()
