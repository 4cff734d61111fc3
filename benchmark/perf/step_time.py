"""Training-step time of every method as a ratio to EW, measured side by side in one process.

Each round times one step of every method in turn (round-robin, so drift hits all alike) on the same model,
batch and optimizer settings; the table reports medians over rounds. Two reference rows:

* ``fwd+T·bwd``: one forward pass and T backward passes of the shared trunk (the floor of any method that
  needs per-task parameter gradients);
* ``torchjd:<aggregator>``: the same step done by TorchJD (``mtl_backward`` + ``jac_to_grad``), when the
  optional ``compare`` extra is installed;
* ``libmtl:<weighting>``: the same step done by LibMTL's weighting class (its ``backward(losses, **kwargs)``,
  which fills the shared gradients) on our model, when LibMTL is installed (``compare`` extra).

Usage: ``python -m benchmark.perf.step_time --out perf.md`` (``make perf``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track

from benchmark import tasks as T
from benchmark.engine import Engine, jacobian_loop
from benchmark.methods import StepContext, available, create
from benchmark.records import git_state, package_versions, write_text_atomic
from datamodules.task_spec import TaskSpec
from models.segnet import SegNetMTL

TASKS = [TaskSpec("semseg", "segmentation", num_classes=8), TaskSpec("depth", "depth"), TaskSpec("normal", "normals")]
SIZES = {
    "synthetic": {"width": 12, "levels": 3, "height": 48, "image_width": 64, "batch": 16},
    "large": {"width": 24, "levels": 4, "height": 96, "image_width": 128, "batch": 8},
}
TORCHJD_AGGREGATORS = {"upgrad": "UPGrad", "mgda": "MGDA", "imtl_g": "IMTLG", "pcgrad": "PCGrad"}
LIBMTL_WEIGHTINGS = {  # ours -> (LibMTL class, its backward kwargs at our method's defaults)
    "pcgrad": ("PCGrad", {}),
    "cagrad": ("CAGrad", {"calpha": 0.5, "rescale": 1}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "gradvac": ("GradVac", {"beta": 0.5}),
    "imtl_h": ("IMTL", {}),
}


@dataclass
class Problem:
    model: SegNetMTL
    batch: dict
    optimizer: torch.optim.Optimizer


def make_batch(size: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, h, w = size["batch"], size["height"], size["image_width"]
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return {"image": torch.rand(b, 3, h, w, generator=g),
            "targets": {"semseg": torch.randint(0, 8, (b, h, w), generator=g),
                        "depth": torch.rand(b, 1, h, w, generator=g) * 5 + 0.5, "normal": normal}}


def make_problem(size: dict, task_bn: bool = False) -> Problem:
    torch.manual_seed(0)
    model = SegNetMTL({t.name: T.head_channels(t) for t in TASKS}, width=size["width"], levels=size["levels"],
                      task_bn=task_bn)
    return Problem(model, make_batch(size), torch.optim.Adam(model.parameters(), lr=1e-4))


def losses_of(p: Problem, z: torch.Tensor | None = None, task: str | None = None) -> torch.Tensor:
    targets = p.batch["targets"]
    if task is not None:
        spec = next(t for t in TASKS if t.name == task)
        return T.task_loss(spec, p.model.head(task, p.model.encode(p.batch["image"], task)), targets[task])
    if p.model.task_bn:
        return torch.stack([losses_of(p, task=t.name) for t in TASKS])
    z = p.model.encode(p.batch["image"]) if z is None else z
    return torch.stack([T.task_loss(t, p.model.head(t.name, z), targets[t.name]) for t in TASKS])


def method_stepper(name: str, size: dict, jacobian_mode: str, **hparams) -> Callable[[], None]:
    """One training step of ``name`` as ``MTOModule.training_step`` takes it (without Lightning)."""
    method = create(name, len(TASKS), **hparams)
    p = make_problem(size, task_bn=name == "cso")
    method.check_model(p.model)
    heads = [q for t in TASKS for q in p.model.task_parameters(t.name)]
    engine = Engine(method, p.model.shared_parameters(), heads, jacobian_mode)
    own = [q for q in method.parameters() if q.requires_grad]
    if own:
        p.optimizer.add_param_group({"params": own, "lr": method.param_lr or 1e-4})
    ctx = StepContext(model=p.model, task_names=[t.name for t in TASKS], batch=p.batch, optimizer=p.optimizer,
                      losses=lambda: losses_of(p), task_loss=lambda task: losses_of(p, task=task),
                      backward=lambda loss: loss.backward(), finite=lambda losses: True, epoch=0, epochs=2)

    def step() -> None:
        p.optimizer.zero_grad(set_to_none=True)
        if method.own_step(ctx):
            return
        z = None if p.model.task_bn else p.model.encode(p.batch["image"])
        z_in = z.detach().requires_grad_() if engine.uses_rep else z
        raw = losses_of(p, z_in)
        engine.step(method.transform_losses(raw), z, z_in)
        p.optimizer.step()
        if method.wants_after_step:
            with torch.no_grad():
                method.after_step(raw.detach(), losses_of(p))

    return step


def forward_t_backward(size: dict) -> Callable[[], None]:
    p = make_problem(size)
    shared = p.model.shared_parameters()
    return lambda: jacobian_loop(losses_of(p), shared)


def torchjd_stepper(aggregator: str, size: dict) -> Callable[[], None] | None:
    try:
        import torchjd.aggregation as agg
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:
        return None
    p = make_problem(size)
    shared = p.model.shared_parameters()
    aggregate = getattr(agg, aggregator)()

    def step() -> None:
        p.optimizer.zero_grad(set_to_none=True)
        z = p.model.encode(p.batch["image"])
        targets = p.batch["targets"]
        losses = [T.task_loss(t, p.model.head(t.name, z), targets[t.name]) for t in TASKS]
        mtl_backward(losses, features=z)
        jac_to_grad(shared, aggregate)
        p.optimizer.step()

    return step


def _libmtl_weighting(name: str) -> type | None:
    """LibMTL's weighting class, imported without ``LibMTL/__init__`` (whose model zoo fails to import on
    current torchvision: ``torchvision.models.utils`` is gone)."""
    import importlib
    import importlib.util
    import sys
    import types

    if "LibMTL" not in sys.modules:
        spec = importlib.util.find_spec("LibMTL")
        if spec is None or not spec.submodule_search_locations:
            return None
        package = types.ModuleType("LibMTL")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["LibMTL"] = package
    return getattr(importlib.import_module("LibMTL.weighting"), name)


def libmtl_stepper(weighting: str, kwargs: dict, size: dict) -> Callable[[], None] | None:
    """A LibMTL training step on our model: its weighting's ``backward`` computes the per-task gradients
    (one backward pass per task, its ``mode='backward'``) and writes the shared gradients; heads keep their
    own losses' gradients, as in LibMTL's trainer."""
    cls = _libmtl_weighting(weighting)
    if cls is None:
        return None
    p = make_problem(size)
    shared = p.model.shared_parameters()
    lib = cls()
    lib.task_num, lib.device, lib.rep_grad = len(TASKS), torch.device("cpu"), False
    lib.get_share_params = lambda: iter(shared)
    lib.zero_grad_share_params = lambda: [q.grad.zero_() for q in shared if q.grad is not None]
    lib.init_param()
    extra = [q for q in lib.parameters() if q.requires_grad]
    if extra:
        p.optimizer.add_param_group({"params": extra})

    def step() -> None:
        p.optimizer.zero_grad(set_to_none=True)
        lib.backward(losses_of(p), **kwargs)
        p.optimizer.step()

    return step


def measure(steppers: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each stepper, timed round-robin."""
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for r in track(range(warmup + rounds), description="timing steps"):
        for name, step in steppers.items():
            start = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def report(size_name: str, medians: dict[str, float], needs: dict[str, str]) -> list[str]:
    ew, floor = medians["ew"], medians["fwd+T·bwd"]
    lines = [f"### {size_name}: {SIZES[size_name]}", "",
             "| row | needs | step ×EW | step ×(fwd+T·bwd) | ours ÷ TorchJD | ours ÷ LibMTL |",
             "|---|---|---|---|---|---|"]
    for name, t in sorted(medians.items(), key=lambda kv: kv[1]):
        jd = medians.get(f"torchjd:{TORCHJD_AGGREGATORS.get(name, '')}")
        lib = medians.get(f"libmtl:{LIBMTL_WEIGHTINGS.get(name, ('',))[0]}")
        vs_jd, vs_lib = (f"{t / ref:.2f}" if ref else "" for ref in (jd, lib))
        lines.append(f"| {name} | {needs.get(name, '')} | {t / ew:.2f} | {t / floor:.2f} | {vs_jd} | {vs_lib} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="perf.md")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jacobian-mode", default="loop", choices=["loop", "batched", "auto"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    methods = args.methods or available()
    needs = {m: create(m, len(TASKS)).needs.value for m in methods}
    needs.update({"cso-phase1": "own step", "cso-phase2": "own step"})
    lines = ["# mtobench step-time benchmark", "",
             f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
             f"torch {torch.__version__}; jacobian_mode {args.jacobian_mode}; {args.rounds} rounds, median; "
             f"commit {git_state()['git_commit']}.", "", f"Versions: {package_versions()}", "",
             "Ratios are of medians measured round-robin in one process. `fwd+T·bwd` is one forward and T "
             "backward passes of the trunk (the floor for per-task parameter gradients); `torchjd:*` rows run "
             "TorchJD's `mtl_backward` + `jac_to_grad`, and `libmtl:*` rows LibMTL's weighting `backward`, on the "
             "same model and batch (absent without the `compare` extra). CSO runs on the per-task-BN SegNet, the "
             "others on the standard one; its mixed mode costs a blend of its two phase rows.", ""]
    for size_name in args.sizes:
        size = SIZES[size_name]
        steppers = {m: method_stepper(m, size, args.jacobian_mode) for m in methods if m != "cso"}
        if "cso" in methods:
            for mode in ("phase1", "phase2"):
                steppers[f"cso-{mode}"] = method_stepper("cso", size, args.jacobian_mode, mode=mode)
        steppers["fwd+T·bwd"] = forward_t_backward(size)
        for ours, theirs in TORCHJD_AGGREGATORS.items():
            jd = torchjd_stepper(theirs, size) if ours in methods else None
            if jd is not None:
                steppers[f"torchjd:{theirs}"] = jd
        for ours, (theirs, kwargs) in LIBMTL_WEIGHTINGS.items():
            lib = libmtl_stepper(theirs, kwargs, size) if ours in methods else None
            if lib is not None:
                steppers[f"libmtl:{theirs}"] = lib
        lines += report(size_name, measure(steppers, args.rounds), {**needs, **{
            k: "jacobian" for k in steppers if k.startswith(("torchjd", "libmtl")) or k == "fwd+T·bwd"}})
    write_text_atomic(Path(args.out), "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
