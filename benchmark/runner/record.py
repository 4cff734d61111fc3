"""The record of a trained run: what ran, on what, how it went (per-epoch metrics, timing, method statistics) and
its status. The one place a run's record and status are made."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch

from benchmark import tasks as T
from benchmark.config import SuiteConfig, resolve_scoring
from benchmark.methods.registry import PLUGIN_ORIGINS
from benchmark.module import MTOModule
from benchmark.records import SCHEMA_VERSION, git_state, package_versions
from benchmark.run_log import RunLog
from benchmark.runner.plan import PlannedRun, model_params


def suite_scoring(suite: SuiteConfig, dm) -> dict:
    """The record's ``scoring`` entry: the suite's ``scoring`` resolved on the datamodule's tasks and declared set
    (``config.resolve_scoring``)."""
    spec = resolve_scoring(suite, T.metric_table(dm.tasks), [t.name for t in dm.tasks if t.auxiliary],
                           getattr(dm, "SCORED_METRICS", None), suite.name)
    return spec.to_record()


def run_status(module: MTOModule) -> dict:
    """The record's ``status`` of a run that trained to the end."""
    return {"status": "finished"}


def make_record(suite: SuiteConfig, run: PlannedRun, dm, tasks: list, module: MTOModule, trainer: L.Trainer,
                wall: float, log: RunLog) -> dict:
    """The record of ``run``, trained as ``module`` by ``trainer`` in ``wall`` seconds on ``dm``'s ``tasks``, with
    what ``log`` kept of its steps."""
    stats = module.stats
    device = trainer.strategy.root_device
    times = torch.tensor(stats.step_times[1:] or stats.step_times or [float("nan")], dtype=torch.float64)
    if device.type == "cuda":
        memory = {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_allocated"}
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        memory = {"peak_memory_bytes": peak_rss, "peak_memory_kind": "process_max_rss"}
    infos = T.metric_table(tasks)
    fields = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "suite": suite.name,
        "dataset": suite.dataset.name,
        "dataset_info": dm.describe(),
        "method": run.method if run.stl_task is None else f"stl-{run.stl_task}",
        "method_label": run.run_id.split("/")[-2],
        "kind": "mtl" if run.stl_task is None else "stl",
        "sweep": run.sweep,
        "method_origin": PLUGIN_ORIGINS.get(run.method, "built-in"),
        "stl_task": run.stl_task,
        "method_hparams": module.method.hparams(),
        "preset": run.preset,
        "update_every": run.update_every,
        "model": {"name": suite.model.name, "params": model_params(suite, run.model_overrides),
                  "overrides": run.model_overrides},
        "seed": run.seed,
        "config": suite.to_dict(),
        "versions": package_versions(),
        **git_state(),
        "device": str(device),
        "world_size": trainer.world_size,
        "jacobian_mode": module.engine.resolved_mode,
        "tasks": [{"name": t.name, "kind": t.kind, "num_classes": t.num_classes, "ignore_index": t.ignore_index,
                   "output_bias": t.output_bias, "pos_weight": t.pos_weight, "auxiliary": t.auxiliary}
                  for t in tasks],
        "metrics": infos,
        "scoring": suite_scoring(suite, dm),
        "epochs": stats.history,
        "timing": {"step_time_mean_s": float(times.mean()), "step_time_median_s": float(times.median()),
                   "steps": len(stats.step_times), "wall_time_s": wall, **memory},
        "nan_skips": stats.nan_skips,
        "resumes": stats.resumes,
        "amp_skipped_steps": stats.amp_skipped_steps,
        "method_stats": stats.method_summary(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **run_status(module),
    }
    return {**fields, **log.record_fields(module)}


