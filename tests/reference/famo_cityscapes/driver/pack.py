"""Pack the FAMO Cityscapes recordings into tests/reference/famo_cityscapes/ with their provenance.

Usage: python pack.py <recordings dir> <fixture root> <FAMO work tree> <commit>

<recordings dir> holds ``record.py``'s ``<method>.json`` (the stored runs) and ``ls_other_threads.json`` (LS with
the other thread count): their largest relative difference per quantity over their common steps is the
reference's own thread noise, from which tests/test_reference_cityscapes.py states its N-step bound.
"""
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import scipy
import torch

rec_dir, fixture, ref, commit = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
here = Path(__file__).resolve().parents[1]
sys.path.append(str(here.parents[2]))
import cvxpy  # noqa: E402

from tests.reference_replay import file_digest, rel_diff  # noqa: E402

runs = {m: json.loads((rec_dir / f"{m}.json").read_text()) for m in ("ls", "imtl", "nashmtl")
        if (rec_dir / f"{m}.json").exists()}
def worst(pairs):
    return max((rel_diff(a, b) for a, b in pairs), default=0.0)


def thread_noise(one: dict, two: dict) -> dict:
    noise = {"loss": worst((a, b) for s, t in zip(one["steps"], two["steps"]) for a, b in zip(s["losses"],
                                                                                             t["losses"]))}
    for key in ("grad_norm_shared", "grad_norm_heads", "update_norm", "lr"):
        noise[key] = worst((s[key], t[key]) for s, t in zip(one["steps"], two["steps"]))
    noise["weight"] = max(noise["grad_norm_shared"], noise["grad_norm_heads"])
    if len(one["steps"]) != len(two["steps"]):
        return noise
    noise["test_metric"] = worst((a, b) for s, t in zip(one["epochs"], two["epochs"])
                                 for a, b in zip(s["test_metrics"], t["test_metrics"]))
    noise["bn_stats"] = worst((one["final"][k], two["final"][k]) for k in ("running_mean_norm", "running_var_norm"))
    noise["param_norm"] = worst((one["final"]["param_norms"][n], v) for n, v in two["final"]["param_norms"].items())
    return noise


other = rec_dir / "ls_other_threads.json"
other = json.loads(other.read_text()) if other.exists() else None
noise = thread_noise(other, runs["ls"]) if other and "ls" in runs else None
header = {
    "repository": "https://github.com/Cranial-XIX/FAMO",
    "commit": commit,
    "entry_point": "experiments/cityscapes/trainer.py (run unmodified as __main__ via runpy; cwd = repository root)",
    "command": "python experiments/cityscapes/trainer.py --data-path <fixture> --method <m> --n-epochs 2 "
               "--batch-size 2 --seed 42",
    "driver": "tests/reference/famo_cityscapes/driver/record.py <work tree> <m> <out.json> <fixture> 2 <threads> "
              "(see its docstring for what it wraps); record_metrics.py <work tree> <fixture> metrics.json; "
              "pack.py (this header, the thread noise)",
    "initial_state": "after the reference builds SegNetMtan (under set_seed(42)) its parameters are overwritten by "
                     "tests/reference_replay.recipe_ keyed by the reference parameter names; buffers: torch defaults",
    "fixture": {"writer": "tests/fixtures_mtan.write_cityscapes",
                "kwargs": {"n_train": 21, "n_val": 3, "height": 32, "width": 64, "seed": 0},
                "sha256": {str(p.relative_to(fixture)): file_digest(p) for p in sorted(fixture.rglob("*.npy"))}},
    "batch_order": "samples[] in the order the trainer fetched them (train loader shuffle=True, batch 2, drop_last "
                   "False: 11 steps per epoch of 2 x 10 + 1 images; test loader in file order, batches 2 + 1)",
    "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                    "scipy": scipy.__version__, "cvxpy": cvxpy.__version__, "device": "cpu",
                    "threads": "per method below (torch.set_num_threads)"},
    "methods": {m: {"steps": len(r["steps"]), "epochs": len(r["epochs"]), "threads": r["threads"], "argv": r["argv"]}
                for m, r in runs.items()},
    "thread_noise": noise,
    "thread_noise_steps": min(len(other["steps"]), len(runs["ls"]["steps"])) if noise else 0,
    "thread_noise_about": "max relative difference over thread_noise_steps LS steps between the reference run with "
                          "1 and with 2 torch threads (weight: the larger gradient-norm noise, LS weights being fixed)",
    "metrics_json": "metrics.json: record_metrics.py applies the trainer's calc_loss, utils.ConfMatrix and "
                    "depth_error to tests/reference_replay.cityscapes_recipe_predictions on the fixture's test "
                    "loader (batch 2, file order), aggregated as the trainer does",
}
(here / "header.json").write_text(json.dumps(header, indent=1) + "\n")
for m in runs:
    shutil.copy(rec_dir / f"{m}.json", here / f"{m}.json")
print(json.dumps(noise, indent=1))
