"""The training work of whole suites, as a ratio to a reference suite, from step and validation costs measured
round-robin in one process (so a loaded machine slows every suite alike).

Per suite, every distinct run kind (a method with its hyper-parameters, model overrides and ``update_every``, or a
single-task baseline) gets one stepper: a training step as ``MTOModule.training_step`` takes it, without
Lightning, on real batches of the suite's dataset. A suite's work is the sum over its planned runs of
``steps × step time + epochs × validation pass``, plus ``--per-run`` seconds of fixed cost per run (trainer
set-up, the first step, W&B). Its wall time is estimated as ``--ref-wall`` (the reference suite's measured
wall time) times the work ratio.

Usage: ``python -m benchmark.perf.suite_cost REF.yaml CANDIDATE.yaml ... [--ref-wall 865]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.engine import Engine
from benchmark.methods import StepContext, create
from benchmark.runner import create_datamodule, create_model, plan_runs


def run_kind(run) -> tuple:
    return (run.method, repr(sorted(run.hparams.items())), repr(sorted(run.model_overrides.items())),
            run.update_every, run.stl_task)


def stepper(suite, dm, run) -> Callable[[], None]:
    """One training step of ``run`` on the suite's first training batch."""
    tasks = [t for t in dm.tasks if run.stl_task in (None, t.name)]
    torch.manual_seed(0)
    model = create_model(suite, tasks, run.model_overrides)
    method = create(run.method, len(tasks), **run.hparams)
    method.check_model(model)
    conditioned = bool(getattr(model, "task_bn", False))
    engine = Engine(method, model.shared_parameters(), [p for t in tasks for p in model.task_parameters(t.name)],
                    suite.train.jacobian_mode, update_every=run.update_every)
    optimizer = torch.optim.Adam(list(model.parameters()) + [p for p in method.parameters() if p.requires_grad],
                                 lr=suite.train.lr)
    batch = next(iter(dm.train_dataloader(seed=0)))

    def loss(t, z=None):
        z = (model.encode(batch["image"], t.name) if conditioned else model.encode(batch["image"])) if z is None else z
        return T.task_loss(t, model.head(t.name, z), batch["targets"][t.name])

    def losses(z=None):
        if z is None and not conditioned:
            z = model.encode(batch["image"])
        return torch.stack([loss(t, z) for t in tasks])

    by_name = {t.name: t for t in tasks}
    ctx = StepContext(model=model, task_names=list(by_name), batch=batch, optimizer=optimizer, losses=losses,
                      task_loss=lambda name: loss(by_name[name]), backward=lambda x: x.backward(),
                      finite=lambda x: True, epoch=0, epochs=suite.train.epochs)

    def step() -> None:
        T.validate_batch(tasks, batch)
        optimizer.zero_grad(set_to_none=True)
        if method.own_step(ctx):
            return
        z = None if conditioned else model.encode(batch["image"])
        z_in = z.detach().requires_grad_() if engine.uses_rep else z
        raw = losses(z_in)
        engine.step(method.transform_losses(raw), z, z_in)
        optimizer.step()
        if method.wants_after_step:
            with torch.no_grad():
                method.after_step(raw.detach(), losses())

    return step


def validator(suite, dm) -> Callable[[], None]:
    """One validation pass (val and test splits, metrics and losses) of the plain model; a task-BN model's pass
    costs one trunk pass per task, counted by the caller."""
    model = create_model(suite, dm.tasks).eval()
    loaders = [dm.val_dataloader(), dm.test_dataloader()]

    @torch.no_grad()
    def validate() -> None:
        metrics = {t.name: T.make_metric(t) for t in dm.tasks}
        for loader in loaders:
            for batch in loader:
                z = model.encode(batch["image"])
                for t in dm.tasks:
                    raw = model.head(t.name, z)
                    metrics[t.name].update(raw, batch["targets"][t.name])
                    T.task_loss(t, raw, batch["targets"][t.name])
        for m in metrics.values():
            m.compute()

    return validate


def measure(timers: dict[str, Callable[[], None]], rounds: int, warmup: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in timers}
    for r in range(warmup + rounds):
        for key, fn in timers.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", help="the reference suite first")
    parser.add_argument("--ref-wall", type=float, default=None, help="measured wall seconds of the reference suite")
    parser.add_argument("--per-run", type=float, default=0.0, help="fixed seconds per run, in the reference's units")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    suites, timers, plans = [], {}, []
    for path in args.suites:
        suite = load_suite(path)
        dm = create_datamodule(suite)
        dm.setup("fit")
        runs = plan_runs(suite, [t.name for t in dm.tasks])
        steps_per_epoch = len(dm.train_dataloader(seed=0))
        for run in runs:
            key = (path, run_kind(run))
            if key not in timers:
                timers[key] = stepper(suite, dm, run)
        timers[(path, "val")] = validator(suite, dm)
        suites.append(suite)
        plans.append((path, runs, steps_per_epoch))
    cost = measure(timers, args.rounds)
    works = []
    for suite, (path, runs, steps_per_epoch) in zip(suites, plans):
        val = cost[(path, "val")]
        train = sum(cost[(path, run_kind(r))] for r in runs) * steps_per_epoch * suite.train.epochs
        valid = sum(val * (3 if r.model_overrides.get("task_bn") and r.stl_task is None else 1)
                    for r in runs) * suite.train.epochs
        works.append((path, len(runs), train, valid, train + valid))
    ref = works[0]
    ew_ref = cost[(ref[0], run_kind(next(r for r in plans[0][1] if r.method == "ew" and r.stl_task is None)))]
    print("| suite | runs | train work ×ref | validation share | EW step ×ref EW step | est. wall s |")
    print("|---|---|---|---|---|---|")
    for (path, n, _train, valid, total), (_, runs, _) in zip(works, plans):
        ew = cost[(path, run_kind(next(r for r in runs if r.method == "ew" and r.stl_task is None)))]
        fixed_ref = args.per_run * ref[1]
        est = ""
        if args.ref_wall is not None:
            scale = (args.ref_wall - fixed_ref) / ref[4]
            est = f"{total * scale + args.per_run * n:.0f}"
        print(f"| {path} | {n} | {total / ref[4]:.3f} | {valid / total:.3f} | {ew / ew_ref:.3f} | {est} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
