"""Orchestration of a suite: ``plan`` (the grid and how each run is built) -> ``train`` (one run, with Lightning)
-> ``suite`` (every run still to do). ``record`` makes a trained run's record and status."""

from benchmark.runner.plan import (
    STL_METHOD,
    PlannedRun,
    check_methods,
    create_datamodule,
    create_model,
    model_params,
    module_config,
    plan_runs,
    resolved_hparams,
    run_fingerprint,
)
from benchmark.runner.record import make_record, run_status
from benchmark.runner.suite import RunsFailed, SuitePlan, plan_suite, run_suite
from benchmark.runner.train import console, train_and_write, train_one

__all__ = [
    "STL_METHOD",
    "PlannedRun",
    "RunsFailed",
    "SuitePlan",
    "check_methods",
    "console",
    "create_datamodule",
    "create_model",
    "make_record",
    "model_params",
    "module_config",
    "plan_runs",
    "plan_suite",
    "resolved_hparams",
    "run_fingerprint",
    "run_status",
    "run_suite",
    "train_and_write",
    "train_one",
]
