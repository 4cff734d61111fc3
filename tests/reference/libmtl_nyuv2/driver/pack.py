"""Pack record_libmtl.py's runs into tests/reference/libmtl_nyuv2/ and update header.json's provenance.

Usage: python pack.py <recordings dir> <fixture root> [--threads N] [METHOD ...]

<recordings dir> holds ``<METHOD>.json`` (record_libmtl.py's output) and ``<METHOD>.time`` (``/usr/bin/time -f
"%e %U %S"`` of that run: wall, user and system seconds). The fixture's sha256s must be the header's. Every
method given (default: every ``<METHOD>.json`` there) replaces its stored run and its header entry (steps,
epochs, argv, weight_args, the command, threads, CPU seconds); the rest of header.json stays as it is, apart from
the environment (this interpreter's versions and the CPU the runs were made on).
"""
import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import scipy
import torch
import torchvision

here = Path(__file__).resolve().parents[1]
sys.path.append(str(here.parents[2]))
from tests.reference_replay import file_digest  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("rec_dir", type=Path)
ap.add_argument("fixture", type=Path)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("methods", nargs="*")
args = ap.parse_args()

header = json.loads((here / "header.json").read_text())
digests = {str(p.relative_to(args.fixture)): file_digest(p) for p in sorted(args.fixture.rglob("*.npy"))}
assert digests == header["fixture"]["sha256"], "the fixture is not the one the header names"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


try:
    import cvxpy
    import ecos
    solvers = {"cvxpy": cvxpy.__version__, "ecos": ecos.__version__}
except ImportError:  # the header's values stay
    solvers = {}
header["environment"] = {**header["environment"], "python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                         **solvers, "device": "cpu", "cpu": cpu_model(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}
methods = args.methods or sorted(p.stem for p in args.rec_dir.glob("*.json") if p.stem in header.get("methods", {})
                                 or (args.rec_dir / f"{p.stem}.time").exists())
for m in methods:
    run = json.loads((args.rec_dir / f"{m}.json").read_text())
    assert run["method"] == m
    wall, user, system = (float(v) for v in (args.rec_dir / f"{m}.time").read_text().split()[-3:])
    steps = len(run["steps"])
    header["methods"][m] = {
        "steps": steps, "epochs": run["epochs_run"], "argv": run["argv"], "weight_args": run["weight_args"],
        "command": f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} python "
                   f"tests/reference/libmtl_nyuv2/driver/record_libmtl.py --libmtl-root <LibMTL checkout> "
                   f"--fixture <fixture> --method {m} --epochs {run['epochs_run']} --out {m}.json",
        "threads": args.threads, "cpu_seconds": round(user + system, 1), "wall_seconds": round(wall, 1),
        "cpu_seconds_per_step": round((user + system) / steps, 2),
    }
    shutil.copy(args.rec_dir / f"{m}.json", here / f"{m}.json")
    print(m, header["methods"][m])
(here / "header.json").write_text(json.dumps(header, indent=1) + "\n")
