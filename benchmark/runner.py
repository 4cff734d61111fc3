"""Train a suite's grid of method x seed (plus single-task baselines) and write one record per run."""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from benchmark import tasks as T
from benchmark.checkpointing import RunCheckpoint, check_resumable, checkpoint_path, fingerprint
from benchmark.config import MethodConfig, SuiteConfig, resolve_scoring
from benchmark.methods import Needs, create
from benchmark.methods.presets import resolve
from benchmark.methods.registry import PLUGIN_ORIGINS
from benchmark.module import MTOModule
from benchmark.names import unknown_name
from benchmark.records import (
    SCHEMA_VERSION,
    check_writable,
    git_state,
    package_versions,
    record_path,
    write_json_atomic,
)
from benchmark.run_log import RunLog, run_log
from benchmark.sweep import SWEEP_METHOD, simplex_grid, sweep_label
from datamodules import DATAMODULES
from models import MODELS

STL_METHOD = "ew"
console = Console()
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


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
    return resolve(method_preset(suite, m), m.name, m.hparams)


def create_datamodule(suite: SuiteConfig):
    if suite.dataset.name not in DATAMODULES:
        raise unknown_name("dataset", suite.dataset.name, DATAMODULES)
    cls = DATAMODULES[suite.dataset.name]
    try:
        return cls(batch_size=suite.train.batch_size, **suite.dataset.params)
    except TypeError as exc:
        raise ValueError(f"dataset {suite.dataset.name!r}: bad dataset.params {suite.dataset.params}: {exc}") from exc


def model_params(suite: SuiteConfig, overrides: dict | None = None) -> dict:
    return {**suite.model.params, **(overrides or {})}


def create_model(suite: SuiteConfig, tasks: list, overrides: dict | None = None) -> torch.nn.Module:
    if suite.model.name not in MODELS:
        raise unknown_name("model", suite.model.name, MODELS)
    params = model_params(suite, overrides)
    biases = {t.name: t.output_bias for t in tasks if t.output_bias}
    if biases:
        params["head_bias"] = biases
    try:
        return MODELS[suite.model.name]({t.name: T.head_channels(t) for t in tasks}, **params)
    except TypeError as exc:
        raise ValueError(f"model {suite.model.name!r}: bad model params {params}: {exc}") from exc


def metric_table(tasks: list) -> dict[str, dict]:
    """Direction and unit of every metric of ``tasks``, keyed ``<task>/<metric>``."""
    return {f"{t.name}/{i.key}": {"direction": i.direction, "unit": i.unit} for t in tasks for i in T.metric_infos(t)}


def suite_scoring(suite: SuiteConfig, dm) -> dict:
    """The record's ``scoring`` entry: the suite's ``scoring`` resolved on the datamodule's tasks and declared set
    (``config.resolve_scoring``)."""
    spec = resolve_scoring(suite, metric_table(dm.tasks), [t.name for t in dm.tasks if t.auxiliary],
                           getattr(dm, "SCORED_METRICS", None), suite.name)
    return spec.to_record()


def plan_runs(suite: SuiteConfig, task_names: list[str], trained: list[str] | None = None) -> list[PlannedRun]:
    """The grid: single-task runs of ``task_names`` x seeds first (so MTL runs can log Δm against them), then
    methods x seeds, then the sweep's weight vectors x seeds.

    ``trained``: every task in the model's order, auxiliary ones included (default ``task_names``); the sweep
    varies the weights of ``task_names`` and gives auxiliary tasks weight 1."""
    base = f"{suite.name}/{suite.dataset.name}"
    runs = [
        PlannedRun(STL_METHOD, {}, seed, f"{base}/stl-{task}/seed{seed}", stl_task=task)
        for task in (task_names if suite.stl else [])
        for seed in suite.seeds
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


def check_methods(suite: SuiteConfig, tasks: list) -> None:
    """Build every method and its model once before training, so a bad name, hyper-parameter or model override
    fails before any run."""
    for m in suite.methods:
        try:
            method = create(m.name, len(tasks), **resolved_hparams(suite, m))
            method.check_model(create_model(suite, tasks, m.model))
            if m.update_every != 1 and (m.update_every < 1 or method.needs is not Needs.GRAMIAN):
                raise ValueError(f"update_every={m.update_every} must be >= 1, and > 1 only for Gramian methods "
                                 f"({m.name} needs {method.needs.value})")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"suite {suite.name!r}: method {m.key!r}: {exc}") from exc


class GridProgress(L.Callback):
    """A rich progress bar over the whole grid, with one line for the steps of the current run."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label
        self.task = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_epochs * trainer.num_training_batches
        self.task = self.progress.add_task(self.label, total=total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.progress.advance(self.task)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.remove_task(self.task)


def run_fingerprint(suite: SuiteConfig, run: PlannedRun) -> str:
    """What a checkpoint must match to be resumed: the run, its dataset and model, and the training settings."""
    train = {k: v for k, v in dataclasses.asdict(suite.train).items() if k != "checkpoint_every_n_batches"}
    return fingerprint({"run": dataclasses.asdict(run), "dataset": dataclasses.asdict(suite.dataset),
                        "model": dataclasses.asdict(suite.model), "train": train})


def train_one(suite: SuiteConfig, run: PlannedRun, dm, progress: Progress, log: RunLog | None = None,
              out: Path | None = None) -> dict | None:
    """Train one run and return its record (the caller writes it); None on DDP ranks other than 0. ``log``
    (default: no W&B) logs its steps. With ``out``, the run checkpoints itself beside its record and resumes from
    a checkpoint found there (``weights_only=True``)."""
    log = log if log is not None else RunLog()
    L.seed_everything(run.seed, workers=True, verbose=False)
    tasks = [t for t in dm.tasks if run.stl_task in (None, t.name)]
    model = create_model(suite, tasks, run.model_overrides)
    method = create(run.method, len(tasks), **run.hparams)
    t = suite.train
    module = MTOModule(model, tasks, method, lr=t.lr, weight_decay=t.weight_decay, jacobian_mode=t.jacobian_mode,
                       nan_policy=t.nan_policy, max_nan_skips=t.max_nan_skips,
                       clip_shared_grad_norm=t.clip_shared_grad_norm, lr_schedule=t.lr_schedule,
                       update_every=run.update_every, optimizer=t.optimizer, momentum=t.momentum,
                       lr_step_size=t.lr_step_size, lr_gamma=t.lr_gamma,
                       log_every_n_steps=suite.logging.log_every_n_steps)
    train_loader = dm.train_dataloader(seed=run.seed)
    callbacks, resume = [GridProgress(progress, run.run_id), log], None
    if out is not None:
        ckpt, key = checkpoint_path(out, run.run_id), run_fingerprint(suite, run)
        callbacks.append(RunCheckpoint(ckpt, key, t.checkpoint_every_n_batches, getattr(train_loader, "sampler", None)))
        if ckpt.exists():
            check_resumable(ckpt, key)
            resume = ckpt
            console.print(f"[yellow]{run.run_id}: resuming from {ckpt}[/]")
    trainer = L.Trainer(max_epochs=t.epochs, accelerator=t.accelerator, precision=t.precision, logger=False,
                        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, sync_batchnorm=t.sync_batchnorm,
                        enable_checkpointing=out is not None, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True, num_sanity_val_steps=0, callbacks=callbacks)
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=[dm.val_dataloader(), dm.test_dataloader()],
                ckpt_path=resume, weights_only=True)
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    return {**make_record(suite, run, dm, tasks, module, trainer, wall), **log.record_fields(module)}


def make_record(suite, run, dm, tasks, module: MTOModule, trainer: L.Trainer, wall: float) -> dict:
    device = trainer.strategy.root_device
    times = torch.tensor(module.step_times[1:] or module.step_times or [float("nan")], dtype=torch.float64)
    if device.type == "cuda":
        memory = {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_allocated"}
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        memory = {"peak_memory_bytes": peak_rss, "peak_memory_kind": "process_max_rss"}
    infos = metric_table(tasks)
    return {
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
        "epochs": module.history,
        "timing": {"step_time_mean_s": float(times.mean()), "step_time_median_s": float(times.median()),
                   "steps": len(module.step_times), "wall_time_s": wall, **memory},
        "nan_skips": module.nan_skips,
        "resumes": module.resumes,
        "amp_skipped_steps": module.amp_skipped_steps,
        "method_stats": module.method_summary(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "finished",
    }


def run_suite(suite: SuiteConfig, force: bool = False, launcher: str = "none", workers: int = 1) -> list[Path]:
    """Train every planned run whose record does not exist yet (resuming from its checkpoint, if any; ``force``
    retrains from scratch); return the record paths of the suite.

    ``launcher`` ``local`` or ``slurm`` trains each run as a submitit job (``benchmark/launch.py``)."""
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
    if len(todo) < len(runs):
        console.print(f"[dim]{len(runs) - len(todo)} of {len(runs)} runs already have records in {out}; skipped[/]")
    if launcher != "none":
        from benchmark.launch import launch_runs

        launch_runs(suite, todo, launcher, workers)
        return [record_path(out, r.run_id) for r in runs]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        grid = progress.add_task(f"suite {suite.name}", total=len(todo))
        for run in todo:
            train_and_write(suite, run, dm, progress, force)
            progress.advance(grid)
    return [record_path(out, r.run_id) for r in runs]


def train_and_write(suite: SuiteConfig, run: PlannedRun, dm, progress: Progress, force: bool = False) -> Path | None:
    """Train ``run`` with its logging open (resuming from its checkpoint unless ``force``), write its record and
    drop the checkpoint; the record's path (None on DDP ranks > 0). A failed run keeps its checkpoint."""
    out = Path(suite.output_dir)
    ckpt = checkpoint_path(out, run.run_id)
    if force:
        ckpt.unlink(missing_ok=True)
    tasks = [t for t in dm.tasks if run.stl_task in (None, t.name)]
    try:
        with run_log(suite, run, metric_table(tasks)) as log:
            record = train_one(suite, run, dm, progress, log, out)
            if record is None:
                return None
            path = record_path(out, run.run_id)
            write_json_atomic(path, record)
            ckpt.unlink(missing_ok=True)
            log.attach_record(path, record)
            return path
    except Exception as exc:
        exc.add_note(f"run {run.run_id} (method {run.method!r}) failed; no record was written"
                     + (f"; rerun to resume from {ckpt}" if ckpt.exists() else ""))
        raise
