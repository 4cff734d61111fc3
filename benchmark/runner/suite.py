"""Run a suite: plan its grid, skip the runs that have records of the same configuration, train the others one
after another (or ``processes`` at a time), each under its own lock (``filelock``), so concurrent ``mtobench run``
of one suite share the work."""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from benchmark.config import SuiteConfig
from benchmark.records import check_writable, read_record, record_path
from benchmark.runner.plan import (
    PlannedRun,
    changed_fields,
    check_methods,
    create_datamodule,
    fingerprint_fields,
    plan_runs,
    run_fingerprint,
)
from benchmark.runner.record import suite_scoring
from benchmark.runner.train import console, train_and_write

TEMP_NAME = re.compile(r"^\.(.+?)\.(\d+)(\.\w+)?\.tmp$")
"""Temp files of the checkpoint (``.<name>.<pid>.tmp``) and record (``.<name>.<pid>.<random>.tmp``) writers."""


class RunsFailed(RuntimeError):
    """Some runs of a suite failed; the others were trained. The message names each failed run and its log."""


@dataclass
class SuitePlan:
    """A suite's planned ``runs``, the ``todo`` ones among them (no record of this configuration yet, a failed or
    unreadable one, or all with ``force``) and the datamodule they train on (prepared and set up)."""

    suite: SuiteConfig
    dm: object
    runs: list[PlannedRun]
    todo: list[PlannedRun]

    def record_paths(self) -> list[Path]:
        return [record_path(Path(self.suite.output_dir), r.run_id) for r in self.runs]


def record_state(suite: SuiteConfig, run: PlannedRun) -> tuple[str, str]:
    """Whether ``run`` still needs training: ``("done", "")``, ``("todo", why)`` (no record, an unreadable or
    failed one) or ``("stale", what differs)`` (a record of another configuration)."""
    path = record_path(Path(suite.output_dir), run.run_id)
    if not path.exists():
        return "todo", ""
    try:
        record = read_record(path)
    except ValueError as exc:
        return "todo", f"{exc}; it is retrained"
    if record.get("status") == "failed":
        return "todo", f"record {path} is of a failed run; it is retrained"
    if record.get("fingerprint") == run_fingerprint(suite, run):
        return "done", ""
    old = record.get("fingerprint_fields")
    if not isinstance(old, dict):
        return "stale", f"record {path} has no configuration fingerprint (written by an older mtobench)"
    changes = "; ".join(changed_fields(old, fingerprint_fields(suite, run)))
    return "stale", f"record {path} was made with other settings: {changes}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files in ``folder`` left by writers that are no longer running (killed mid-write)."""
    removed = []
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        match = TEMP_NAME.match(path.name)
        if match and not _pid_alive(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def plan_suite(suite: SuiteConfig, force: bool = False) -> SuitePlan:
    """Check the output folders (of every run and of the leaderboard), the device and every method; prepare the
    data; plan the grid and find the runs still to train (all of them with ``force``). A record made with other
    settings stops the suite, naming the run and the differing fields, unless ``force``."""
    out = Path(suite.output_dir)
    check_writable(out, "output_dir")
    check_writable(Path(suite.leaderboard).parent, "leaderboard")
    cuda = torch.cuda.is_available()
    if suite.train.accelerator == "cuda" and not cuda:
        raise ValueError(f"suite {suite.name!r}: train.accelerator='cuda' but torch {torch.__version__} finds no CUDA "
                         "device; set train.accelerator to 'cpu' or 'auto'")
    if suite.train.precision == "16-mixed" and not cuda:
        raise ValueError(f"suite {suite.name!r}: train.precision='16-mixed' with train.accelerator="
                         f"{suite.train.accelerator!r} but no CUDA device: Lightning would train in bf16-mixed "
                         "instead; set train.precision to 'bf16-mixed' or '32-true'")
    dm = create_datamodule(suite)
    dm.prepare_data()
    dm.setup("fit")
    check_methods(suite, dm.tasks)
    suite_scoring(suite, dm)
    runs = plan_runs(suite, [t.name for t in dm.tasks if not t.auxiliary], [t.name for t in dm.tasks])
    for folder in sorted({record_path(out, r.run_id).parent for r in runs}):
        check_writable(folder, "output_dir")
        for path in remove_orphan_temp_files(folder):
            console.print(f"[dim]removed {path}, left by a writer that is no longer running[/]", highlight=False)
    todo, stale = [], []
    for run in runs:
        state, why = ("todo", "") if force else record_state(suite, run)
        if why:
            console.print(f"[yellow]{escape(why)}[/]", highlight=False)
        if state == "stale":
            stale.append(f"{run.run_id}: {why}")
        elif state == "todo":
            todo.append(run)
    if stale:
        raise ValueError(f"suite {suite.name!r}: {len(stale)} run(s) already have records made with other settings; "
                         "rerun with --force to retrain them (their records are replaced), or set another "
                         "output_dir:\n  " + "\n  ".join(stale))

    if not todo:
        console.print(f"all {len(runs)} runs already have records in {out}; nothing to train (--force retrains)")
    elif len(todo) < len(runs):
        console.print(f"[dim]{len(runs) - len(todo)} of {len(runs)} runs already have records in {out}; skipped[/]")
    return SuitePlan(suite, dm, runs, todo)


def lock_path(out_dir: Path, run_id: str) -> Path:
    """The lock a run's writer holds while it trains, beside its record."""
    return Path(out_dir) / f"{run_id}.lock"


@contextmanager
def claimed(suite: SuiteConfig, run: PlannedRun, wait: bool) -> Iterator[bool]:
    """Hold ``run``'s lock inside; yields False if another process holds it (and ``wait`` is False). One process
    of a DDP run (several devices) trains it with the others, so no lock is taken there."""
    if suite.train.devices * suite.train.num_nodes > 1:
        yield True
        return
    path = lock_path(Path(suite.output_dir), run.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def run_suite(suite: SuiteConfig, force: bool = False, processes: int = 1) -> list[Path]:
    """Train every planned run that has no record of this configuration yet (resuming from its checkpoint, if any;
    ``force`` retrains from scratch); return the record paths of the suite. A run another process is training is
    left to it, then waited for at the end. A failed run does not stop the others: :class:`RunsFailed` names them
    all at the end. ``benchmark.launch.run`` trains them as submitit jobs instead.

    ``processes`` > 1 trains that many runs at once in worker processes, splitting this process's torch CPU
    threads between them: on 2 cores a small model gains little from a second intra-op thread, so two one-thread
    runs train ~1.5x as many steps per second as one two-thread run (benchmark/perf/power_notes.md §5)."""
    if processes < 1:
        raise ValueError(f"processes={processes} must be >= 1")
    plan = plan_suite(suite, force)
    if not plan.todo:
        return plan.record_paths()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    failures: list[str] = []
    with Progress(*columns, console=console) as progress:
        grid = progress.add_task(f"suite {suite.name}", total=len(plan.todo))
        if processes > 1 and len(plan.todo) > 1:
            _train_in_workers(plan, force, processes, progress, grid, failures)
            return _finish(plan, failures)
        deferred = []
        for run in plan.todo:
            if not _train_claimed(suite, run, plan.dm, progress, force, failures, wait=False):
                console.print(f"[dim]{run.run_id}: another process is training it; left to it[/]")
                deferred.append(run)
                continue
            progress.advance(grid)
        for run in deferred:
            _train_claimed(suite, run, plan.dm, progress, force, failures, wait=True)
            progress.advance(grid)
    return _finish(plan, failures)


def _finish(plan: SuitePlan, failures: list[str]) -> list[Path]:
    if failures:
        raise RunsFailed(f"{len(failures)} of {len(plan.todo)} runs failed (the others have records):\n  "
                         + "\n  ".join(failures))
    return plan.record_paths()


_worker: dict = {}
"""A worker process's suite, datamodule and (disabled) progress display, set by :func:`_start_worker`."""


def _start_worker(suite: SuiteConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    dm = create_datamodule(suite)
    dm.setup("fit")
    _worker.update(suite=suite, dm=dm, progress=Progress(console=console, disable=True))


def _train_in_worker(job: tuple[PlannedRun, bool]) -> list[str]:
    run, force = job
    failures: list[str] = []
    w = _worker
    _train_claimed(w["suite"], run, w["dm"], w["progress"], force, failures, wait=True)
    return failures


def _train_in_workers(plan: SuitePlan, force: bool, processes: int, progress: Progress, grid, failures: list[str]):
    """Train ``plan.todo`` in ``processes`` spawned workers, in plan order, each run under its lock."""
    threads = max(1, torch.get_num_threads() // processes)
    console.print(f"[dim]training {processes} runs at a time, {threads} torch thread(s) each[/]")
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_start_worker, initargs=(plan.suite, threads)) as pool:
        for failed in pool.imap_unordered(_train_in_worker, [(run, force) for run in plan.todo], chunksize=1):
            failures += failed
            progress.advance(grid)


def _train_claimed(suite: SuiteConfig, run: PlannedRun, dm, progress: Progress, force: bool, failures: list[str],
                   wait: bool) -> bool:
    """Train ``run`` under its lock unless, once the lock is held, its record is done (another process trained it
    meanwhile); False if another process holds the lock and ``wait`` is False."""
    with claimed(suite, run, wait) as held:
        if not held:
            return False
        if record_state(suite, run)[0] == "done" and (wait or not force):
            return True
        try:
            train_and_write(suite, run, dm, progress, force)
        except Exception as exc:  # noqa: BLE001 - recorded as failed; the suite goes on
            notes = "; ".join(getattr(exc, "__notes__", []))
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            failures.append(f"{run.run_id}: {type(exc).__name__}: {message.splitlines()[0] if message else ''}"
                            f" ({notes})")
            console.print(f"[red]{escape(run.run_id)} failed: {type(exc).__name__}: {escape(message)}[/]",
                          highlight=False)
    return True
