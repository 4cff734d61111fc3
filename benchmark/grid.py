"""The grid of a suite: single-task baselines, methods and sweep points, each x seeds (no torch or Lightning,
so ``mtobench run --dry-run`` and ``mtobench table --dry-run`` answer at once)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.config import MethodConfig, SuiteConfig
from benchmark.sweep import SWEEP_METHOD, simplex_grid, sweep_label

STL_METHOD = "ew"
PRESETS_MODULE = "benchmark.methods.presets"


def presets():
    """``benchmark/methods/presets.py`` (plain data); when the methods package is not imported yet, a copy loaded
    from its file, so that planning does not import torch through ``benchmark/methods/__init__.py``."""
    if PRESETS_MODULE in sys.modules:
        return sys.modules[PRESETS_MODULE]
    spec = importlib.util.spec_from_file_location("_mtobench_presets", Path(__file__).parent / "methods" / "presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid. ``stl_task`` is set for a single-task baseline run."""

    method: str
    hparams: dict
    seed: int
    run_id: str
    stl_task: str | None = None
    model_overrides: dict = field(default_factory=dict)
    update_every: int = 1
    preset: str | None = None
    sweep: bool = False


def method_preset(suite: SuiteConfig, m: MethodConfig) -> str | None:
    """The method's own preset, else the suite's default."""
    return m.preset if m.preset is not None else suite.preset


def resolved_hparams(suite: SuiteConfig, m: MethodConfig) -> dict:
    """The constructor arguments of ``m``: its preset's entry overridden by its explicit ``hparams``."""
    return presets().resolve(method_preset(suite, m), m.name, m.hparams)


def plan_runs(suite: SuiteConfig, task_names: list[str], trained: list[str] | None = None) -> list[PlannedRun]:
    """The grid: single-task runs of ``task_names`` x ``stl_seeds`` (default: the seeds) first (so MTL runs can
    log Δm against them), then methods x seeds, then the sweep's weight vectors x seeds.

    ``trained``: every task in the model's order, auxiliary ones included (default ``task_names``); the sweep
    varies the weights of ``task_names`` and gives auxiliary tasks weight 1."""
    base = f"{suite.name}/{suite.dataset.name}"
    runs = [
        PlannedRun(STL_METHOD, {}, seed, f"{base}/stl-{task}/seed{seed}", stl_task=task)
        for task in (task_names if suite.stl else [])
        for seed in (suite.seeds if suite.stl_seeds is None else suite.stl_seeds)
    ]
    runs += [
        PlannedRun(m.name, resolved_hparams(suite, m), seed, f"{base}/{m.key}/seed{seed}",
                   model_overrides=dict(m.model), update_every=m.update_every, preset=method_preset(suite, m))
        for m in suite.methods
        for seed in suite.seeds
    ]
    if suite.sweep.points:
        order = trained or task_names
        for grid in simplex_grid(len(task_names), suite.sweep.points):
            w = [dict(zip(task_names, grid)).get(t, 1.0) for t in order]
            runs += [PlannedRun(SWEEP_METHOD, {"weights": w}, seed, f"{base}/{sweep_label(w)}/seed{seed}", sweep=True)
                     for seed in suite.seeds]
    return runs
