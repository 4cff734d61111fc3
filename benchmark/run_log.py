"""Logging of one training run: the thinned per-step series kept in its record, and the same numbers, the
per-epoch metrics and Δm against the suite's single-task runs, sent to W&B when it is on.

The series holds what ``MTOModule.stats.logged_step`` leaves every ``log_every_n_steps`` batches: task losses,
weights, gradient norms and cosines, method statistics (CSO's priority shares) and step time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only

from benchmark.records import load_records, record_metric
from benchmark.scoring import delta_m, select
from benchmark.scoring import stl_baseline as measured_baseline
from benchmark.wandb_log import attach_file, open_run, resolve_mode

MAX_STEP_POINTS = 256


class StepSeries:
    """The logged steps, thinned to at most ``max_points``: every ``stride``-th is kept, the stride doubling (and
    every other kept point dropped) whenever the list would grow past ``max_points``."""

    def __init__(self, max_points: int = MAX_STEP_POINTS) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.max_points, self.stride, self.seen = max_points, 1, 0
        self.points: list[dict[str, float]] = []

    def add(self, point: dict[str, float]) -> None:
        if self.seen % self.stride == 0:
            self.points.append(point)
            if len(self.points) > self.max_points:
                self.points, self.stride = self.points[::2], 2 * self.stride
        self.seen += 1


@dataclass(frozen=True)
class Baseline:
    """The STL test metrics Δm is measured against (None when incomplete), and where they came from."""

    values: dict[str, float] | None
    note: str


def stl_baseline(records_dir: Path, suite: str, dataset: str, metrics: Mapping[str, Mapping[str, Any]],
                 rule: str) -> Baseline:
    """Per metric, the mean over the suite's finished STL runs of its task of the test value ``rule`` selects
    (the leaderboard's baseline, :func:`benchmark.scoring.stl_baseline`); None with a note naming the tasks that
    have no STL record yet."""
    try:
        records = load_records(records_dir)[0] if Path(records_dir).is_dir() else []
    except ValueError as exc:  # an unreadable record (one being retrained, say) leaves Δm undefined, not the run
        return Baseline(None, f"n/a: {exc}")
    stl = [r for r in records if r.get("kind") == "stl" and r.get("suite") == suite and r.get("dataset") == dataset]
    found = measured_baseline(stl, [record_metric(k, spec) for k, spec in metrics.items()],
                              {r["run_id"]: select(r, rule, "test") for r in stl})
    if found.missing_tasks:
        return Baseline(None, f"n/a: no STL record yet for task(s) {', '.join(found.missing_tasks)} in {records_dir}")
    if found.lacking:
        return Baseline(None, f"n/a: STL records lack metric(s) {', '.join(found.lacking)} in {records_dir}")
    if found.undefined:
        return Baseline(None, f"n/a: the STL baseline of {', '.join(found.undefined)} is 0 or NaN "
                        "(relative change undefined)")
    return Baseline(found.means, f"STL records ({len(stl)} runs, rule {rule}) in {records_dir}")


INDEXED_WEIGHT = re.compile(r"weight_\d+")


def once_each(stats: Mapping[str, float]) -> dict[str, float]:
    """``stats`` without the method's index-named weights (``weight_0``...) when the task-named ones
    (``weight_semseg``...) are there too, so that W&B logs each weight once."""
    named = any(k.startswith("weight_") and not INDEXED_WEIGHT.fullmatch(k) for k in stats)
    return {k: v for k, v in stats.items() if not (named and INDEXED_WEIGHT.fullmatch(k))}


class RunLog(L.Callback):
    """Collects the logged steps of a run and forwards steps and epochs to ``wandb_run`` (None: W&B off)."""

    def __init__(self, wandb_run=None, mode: str = "off", baseline: Baseline | None = None,
                 directions: Mapping[str, str] | None = None, max_points: int = MAX_STEP_POINTS) -> None:
        self.wandb_run, self.mode, self.baseline = wandb_run, mode, baseline
        self.directions = dict(directions or {})
        self.series = StepSeries(max_points)
        self.epochs_logged = 0

    def state_dict(self) -> dict:
        """The step series so far, so a resumed run's record keeps the steps before the resume."""
        s = self.series
        return {"points": s.points, "stride": s.stride, "seen": s.seen, "epochs_logged": self.epochs_logged}

    def load_state_dict(self, state: dict) -> None:
        self.series.points, self.series.stride, self.series.seen = state["points"], state["stride"], state["seen"]
        self.epochs_logged = state["epochs_logged"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        entry = pl_module.stats.logged_step
        if entry is None:
            return
        point = {"batch": pl_module.stats.batches - 1, "epoch": trainer.current_epoch, **entry}
        self.series.add(point)
        if self.wandb_run is not None:
            self.wandb_run.log({"epoch": point["epoch"], **{f"train/{k}": v for k, v in once_each(entry).items()}},
                               step=point["batch"])

    def on_train_start(self, trainer, pl_module) -> None:
        """The method's resolved hyper-parameters (defaults included) go into the W&B config."""
        if self.wandb_run is not None:
            self.wandb_run.config.update({"method_hparams": pl_module.method.hparams()}, allow_val_change=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Each new epoch entry goes to the W&B row of the epoch's last batch."""
        for entry in pl_module.stats.history[self.epochs_logged:]:
            if self.wandb_run is not None:
                self.wandb_run.log(self.epoch_payload(entry), step=max(pl_module.stats.batches - 1, 0))
        self.epochs_logged = len(pl_module.stats.history)

    def epoch_payload(self, entry: Mapping[str, Any]) -> dict[str, float]:
        """One epoch's W&B row: val and test metrics, Δm of the test metrics (if a baseline exists), val loss,
        LR and the epoch means of the step statistics."""
        payload = {"epoch": entry["epoch"], "val_loss": entry["val_loss"]}
        payload.update({f"{split}/{k}": v for split in ("val", "test") for k, v in entry[split].items()})
        payload.update({f"epoch_mean/{k}": v for k, v in once_each(entry.get("method_stats") or {}).items()})
        if entry.get("lr") is not None:
            payload["lr"] = entry["lr"]
        if self.baseline is not None and self.baseline.values is not None:
            payload["test/delta_m"] = delta_m(entry["test"], self.baseline.values, self.directions)
        return payload

    def record_fields(self, module) -> dict[str, Any]:
        """What a run record keeps of the logging: the thinned step series and how it was logged."""
        run = self.wandb_run
        return {
            "step_log": {"every": module.config.log_every_n_steps, "stride": self.series.stride,
                         "logged_steps": self.series.seen, "points": self.series.points},
            "logging": {
                "wandb": self.mode,
                "wandb_run_id": None if run is None else run.id,
                "wandb_run_dir": None if run is None else str(Path(run.dir).parent),
                "grad_stats": {"sources": sorted(module.stats.probe_sources), "steps": module.stats.probe_steps,
                               "seconds": module.stats.probe_seconds,
                               "seconds_per_probe": module.stats.probe_seconds / max(module.stats.probe_steps, 1)},
                "delta_m_baseline": None if self.baseline is None else self.baseline.note,
            },
        }

    def attach_record(self, path: Path, record: Mapping[str, Any]) -> None:
        """Attach the written record to the W&B run (as a file, with its timing in the summary)."""
        if self.wandb_run is None:
            return
        attach_file(self.wandb_run, path, "record.json")
        timing = record.get("timing") or {}
        self.wandb_run.summary.update({f"timing/{k}": v for k, v in timing.items() if isinstance(v, int | float)})
        if self.baseline is not None:
            self.wandb_run.summary["delta_m_baseline"] = self.baseline.note


@contextmanager
def run_log(suite, run, metrics: Mapping[str, Mapping[str, Any]]) -> Iterator[RunLog]:
    """A :class:`RunLog` for one planned run of ``suite``, with its W&B run open while inside (grouped by suite
    and dataset, job type = method label) and finished with exit code 1 if the block raises; W&B is off on DDP
    ranks other than 0."""
    mode = resolve_mode(suite.logging.wandb) if rank_zero_only.rank == 0 else "off"
    label = run.run_id.split("/")[-2]
    baseline = None
    if run.stl_task is None:
        rule = suite.selection
        baseline = stl_baseline(Path(suite.output_dir) / suite.name, suite.name, suite.dataset.name, metrics, rule)
    wandb_run = None
    if mode != "off":
        config = {"suite": suite.to_dict(), "run": dataclasses.asdict(run)}
        wandb_run = open_run(mode, suite.output_dir, suite.logging.project, suite.logging.entity,
                             group=f"{suite.name}/{suite.dataset.name}", job_type=label,
                             name=f"{label}/seed{run.seed}", config=config,
                             tags=[f"suite:{suite.name}", f"dataset:{suite.dataset.name}", f"method:{label}",
                                   f"seed:{run.seed}"])
        if baseline is not None:
            wandb_run.summary["delta_m_baseline"] = baseline.note
    log = RunLog(wandb_run, mode, baseline, {k: record_metric(k, v).direction for k, v in metrics.items()})
    try:
        yield log
    except BaseException:
        if wandb_run is not None:
            wandb_run.finish(exit_code=1)
        raise
    if wandb_run is not None:
        wandb_run.finish()
