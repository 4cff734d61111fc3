"""The record of a trained run: what ran, on what, how it went (per-epoch metrics, timing, method statistics) and
its status. The one place a run's record and status are made."""

from __future__ import annotations

import math
import resource
import time
import traceback
from pathlib import Path

import lightning as L
import torch

from benchmark import tasks as T
from benchmark.config import SuiteConfig, resolve_scoring
from benchmark.methods.registry import PLUGIN_ORIGINS
from benchmark.module import MTOModule
from benchmark.records import SCHEMA_VERSION, git_state, package_versions
from benchmark.run_log import RunLog
from benchmark.runner.plan import PlannedRun, fingerprint_fields, model_params, run_fingerprint
from benchmark.scoring import select

STATUSES = ("finished", "diverged", "failed")


def suite_scoring(suite: SuiteConfig, dm) -> dict:
    """The record's ``scoring`` entry: the suite's ``scoring`` resolved on the datamodule's tasks and declared set
    (``config.resolve_scoring``)."""
    spec = resolve_scoring(suite, T.metric_table(dm.tasks), [t.name for t in dm.tasks if t.auxiliary],
                           getattr(dm, "SCORED_METRICS", None), suite.name)
    return spec.to_record()


def run_status(fields: dict, module: MTOModule, rule: str) -> dict:
    """The record's ``status`` of a run that trained to the end: ``finished`` only if every test metric ``rule``
    selects and every final weight is finite, else ``diverged`` with the reason and the skipped-step count."""
    bad_weights = [n for n, p in module.model.named_parameters() if not bool(torch.isfinite(p).all())]
    try:
        selected = select(fields, rule, "test")
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        selected, why = {}, f"no test metrics can be selected by rule {rule!r} ({exc})"
    else:
        why = None
    bad = sorted(k for k in fields["metrics"] if not _finite(selected.get(k)))
    if why is None and bad:
        why = f"non-finite selected test metric(s) {', '.join(bad)} (rule {rule!r})"
    if bad_weights:
        listed = ", ".join(bad_weights[:3]) + (f" and {len(bad_weights) - 3} more" if len(bad_weights) > 3 else "")
        why = "; ".join(filter(None, [why, f"non-finite final weights in {listed}"]))
    if why is None:
        return {"status": "finished"}
    return {"status": "diverged", "status_reason": f"{why}; after {module.stats.nan_skips} skipped steps"}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def failure_log_path(out_dir: Path, run_id: str) -> Path:
    """The traceback of a failed run, beside its record."""
    return Path(out_dir) / f"{run_id}.failed.log"


def run_identity(suite: SuiteConfig, run: PlannedRun) -> dict:
    """The fields that open every record: schema, run, suite and dataset."""
    return {"schema_version": SCHEMA_VERSION, "run_id": run.run_id, "suite": suite.name, "dataset": suite.dataset.name}


def run_method(run: PlannedRun) -> dict:
    """The fields that name a record's method: its key, label, kind, origin and single-task target."""
    return {"method": run.method if run.stl_task is None else f"stl-{run.stl_task}",
            "method_label": run.run_id.split("/")[-2], "kind": "mtl" if run.stl_task is None else "stl",
            "sweep": run.sweep, "method_origin": PLUGIN_ORIGINS.get(run.method, "built-in"),
            "stl_task": run.stl_task}


def failure_record(suite: SuiteConfig, run: PlannedRun, tasks: list, exc: BaseException, log: Path) -> dict:
    """The record of a run that stopped with ``exc``: ``diverged`` for a non-finite loss
    (``FloatingPointError``, with the skipped-step count), else ``failed`` with the exception's type and
    message; the traceback is written to ``log`` (by the caller) and named here. It carries no metrics."""
    diverged = isinstance(exc, FloatingPointError)
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    skips = getattr(exc, "nan_skips", None)
    return {
        **run_identity(suite, run),
        **run_method(run),
        "method_hparams": run.hparams,
        "seed": run.seed,
        "config": suite.to_dict(),
        "fingerprint": run_fingerprint(suite, run),
        "fingerprint_fields": fingerprint_fields(suite, run),
        "versions": package_versions(),
        **git_state(),
        "metrics": T.metric_table(tasks),
        "epochs": [],
        "nan_skips": skips,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "diverged" if diverged else "failed",
        "status_reason": (f"{message}; after {skips} skipped steps" if diverged and skips is not None
                          else f"{type(exc).__name__}: {message}"),
        "error": {"type": type(exc).__name__, "message": message, "log": str(log)},
    }


def traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def effective_setup(trainer: L.Trainer) -> dict:
    """What Lightning actually ran: precision, accelerator, device count and strategy (after its resolution of
    ``auto`` and any silent change, e.g. 16-mixed becoming bf16-mixed on CPU), and torch's intra-op CPU threads
    (``mtobench run --processes N`` trains N runs at once with fewer threads each; float sums may round
    differently with another thread count)."""
    return {"precision": str(trainer.precision_plugin.precision),
            "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
            "devices": trainer.num_devices, "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__, "cpu_threads": torch.get_num_threads()}


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
        **run_identity(suite, run),
        "dataset_info": dm.describe(),
        **run_method(run),
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
                   "steps": len(stats.step_times), "wall_time_s": stats.wall_before_s + wall, **memory},
        "nan_skips": stats.nan_skips,
        "resumes": stats.resumes,
        "amp_skipped_steps": stats.amp_skipped_steps,
        "method_stats": stats.method_summary(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": run_fingerprint(suite, run),
        "fingerprint_fields": fingerprint_fields(suite, run),
        "effective": effective_setup(trainer),
    }
    fields.update(run_status(fields, module, suite.selection))
    return {**fields, **log.record_fields(module)}


