"""Run a suite: plan its grid, skip the runs that have records, train the others one after another."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from benchmark.config import SuiteConfig
from benchmark.records import check_writable, record_path
from benchmark.runner.plan import PlannedRun, check_methods, create_datamodule, plan_runs
from benchmark.runner.record import suite_scoring
from benchmark.runner.train import console, train_and_write


@dataclass
class SuitePlan:
    """A suite's planned ``runs``, the ``todo`` ones among them (no record yet, or all with ``force``) and the
    datamodule they train on (prepared and set up)."""

    suite: SuiteConfig
    dm: object
    runs: list[PlannedRun]
    todo: list[PlannedRun]

    def record_paths(self) -> list[Path]:
        return [record_path(Path(self.suite.output_dir), r.run_id) for r in self.runs]


def plan_suite(suite: SuiteConfig, force: bool = False) -> SuitePlan:
    """Check the output folder, the device and every method; prepare the data; plan the grid and find the runs
    still to train (all of them with ``force``)."""
    out = Path(suite.output_dir)
    check_writable(out, "output_dir")
    if suite.train.accelerator == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"suite {suite.name!r}: train.accelerator='cuda' but torch {torch.__version__} finds no CUDA "
                         "device; set train.accelerator to 'cpu' or 'auto'")
    dm = create_datamodule(suite)
    dm.prepare_data()
    dm.setup("fit")
    check_methods(suite, dm.tasks)
    suite_scoring(suite, dm)
    runs = plan_runs(suite, [t.name for t in dm.tasks if not t.auxiliary], [t.name for t in dm.tasks])
    todo = [r for r in runs if force or not record_path(out, r.run_id).exists()]
    if not todo:
        console.print(f"all {len(runs)} runs already have records in {out}; nothing to train (--force retrains)")
    elif len(todo) < len(runs):
        console.print(f"[dim]{len(runs) - len(todo)} of {len(runs)} runs already have records in {out}; skipped[/]")
    return SuitePlan(suite, dm, runs, todo)


def run_suite(suite: SuiteConfig, force: bool = False) -> list[Path]:
    """Train, in this process, every planned run whose record does not exist yet (resuming from its checkpoint, if
    any; ``force`` retrains from scratch); return the record paths of the suite. ``benchmark.launch.run`` trains
    them as submitit jobs instead."""
    plan = plan_suite(suite, force)
    if not plan.todo:
        return plan.record_paths()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        grid = progress.add_task(f"suite {suite.name}", total=len(plan.todo))
        for run in plan.todo:
            train_and_write(suite, run, plan.dm, progress, force)
            progress.advance(grid)
    return plan.record_paths()
