"""Run a suite's planned runs as submitit jobs: a SLURM job array, or local processes (the same code path).

Each job trains one run with :func:`benchmark.runner.train.train_and_write` and writes its record, exactly as the
sequential runner does; the leaderboard is built from the records after every job has finished. Records from many
machines merge by folder.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from rich.progress import Progress

from benchmark.config import LauncherConfig, SuiteConfig
from benchmark.records import record_path
from benchmark.runner.plan import PlannedRun, create_datamodule
from benchmark.runner.suite import claimed, plan_suite, run_suite
from benchmark.runner.train import console, train_and_write

LAUNCHERS = ("none", "local", "slurm")


class JobsFailed(RuntimeError):
    """Some jobs of a launched grid failed; the message names each run and its log folder."""

POLL_S = 0.5


def run(suite: SuiteConfig, force: bool = False, launcher: str = "none", workers: int = 1) -> list[Path]:
    """Train the runs of ``suite`` that have no record yet (all with ``force``) and return its record paths: in
    ``workers`` processes of this command (``launcher`` ``none``, :func:`benchmark.runner.run_suite`) or as
    submitit jobs (``local``, ``slurm``; their checkpoints are resumed even with ``force``)."""
    if launcher == "none":
        return run_suite(suite, force, processes=workers)
    plan = plan_suite(suite, force)
    launch_runs(suite, plan.todo, launcher, workers)
    return plan.record_paths()


def run_job(suite: SuiteConfig, run: PlannedRun) -> str | None:
    """One job: train ``run`` under its lock (waiting for another process holding it) and write its record;
    returns the record's path (None on DDP ranks other than 0)."""
    dm = create_datamodule(suite)
    dm.prepare_data()
    dm.setup("fit")
    with Progress(console=console, disable=True) as progress, claimed(suite, run, wait=True):
        path = train_and_write(suite, run, dm, progress)
    return None if path is None else str(path)


def executor_parameters(cfg: LauncherConfig, launcher: str, workers: int | None, name: str) -> dict:
    """``update_parameters`` arguments of the submitit executor for ``launcher``."""
    params: dict = {"timeout_min": cfg.timeout_min, "gpus_per_node": cfg.gpus_per_node}
    if launcher == "slurm":
        params.update(name=name, slurm_array_parallelism=workers or cfg.array_parallelism, tasks_per_node=1, nodes=1)
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        if cfg.cpus_per_task:
            params["cpus_per_task"] = cfg.cpus_per_task
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
        if cfg.setup:
            params["slurm_setup"] = list(cfg.setup)
    elif cfg.setup:
        params["local_setup"] = list(cfg.setup)
    return params


def make_executor(suite: SuiteConfig, launcher: str, workers: int | None):
    """A submitit ``AutoExecutor`` for ``launcher`` (``local`` or ``slurm``) with the suite's parameters."""
    import submitit

    if launcher not in ("local", "slurm"):
        raise ValueError(f"launcher {launcher!r} is not one of {LAUNCHERS[1:]}")
    folder = Path(suite.output_dir) / suite.launcher.folder / suite.name / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    executor.update_parameters(**executor_parameters(suite.launcher, launcher, workers, f"mtobench-{suite.name}"))
    return executor


def launch_runs(suite: SuiteConfig, runs: list[PlannedRun], launcher: str, workers: int = 1) -> list[Path]:
    """Train ``runs`` as submitit jobs and wait for all of them.

    SLURM gets one job array (at most ``workers`` running at once when given, else ``launcher.array_parallelism``);
    the local executor starts every job it is given, so at most ``workers`` are kept running. A failed job does
    not stop the others; the failures are raised together at the end, naming each run and its log folder.
    """
    if workers < 1:
        raise ValueError(f"--workers={workers} must be >= 1")
    if not runs:
        return []
    executor = make_executor(suite, launcher, workers if launcher == "local" or workers > 1 else None)
    if launcher == "slurm":
        jobs = list(zip(runs, executor.map_array(run_job, [suite] * len(runs), runs), strict=True))
        console.print(f"submitted {len(jobs)} runs as SLURM array {jobs[0][1].job_id.split('_')[0]}")
    else:
        jobs = _throttled(executor, suite, runs, workers)
    failures = []
    for run, job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
            failures.append(f"{run.run_id}: {_error_line(exc)} (logs: {job.paths.folder})")
    if failures:
        raise JobsFailed(f"{len(failures)} of {len(runs)} jobs failed:\n  " + "\n  ".join(failures))
    return [record_path(Path(suite.output_dir), run.run_id) for run in runs]


def _error_line(exc: Exception) -> str:
    """The exception line of a failed job's traceback (submitit wraps it with log paths)."""
    lines = str(exc).splitlines()
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return found[-1] if found else repr(exc)


def _throttled(executor, suite: SuiteConfig, runs: list[PlannedRun], workers: int) -> list:
    """Submit the runs one by one, keeping at most ``workers`` jobs running."""
    pending, running, done = list(runs), [], []
    while pending or running:
        while pending and len(running) < workers:
            run = pending.pop(0)
            running.append((run, executor.submit(run_job, suite, run)))
        time.sleep(POLL_S)
        states = [(r, j, j.done()) for r, j in running]
        done += [(r, j) for r, j, finished in states if finished]
        running = [(r, j) for r, j, finished in states if not finished]
    order = {r.run_id: i for i, r in enumerate(runs)}
    return sorted(done, key=lambda rj: order[rj[0].run_id])
