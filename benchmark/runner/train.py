"""Train one planned run with Lightning (resuming from its checkpoint) and write its record."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.progress import Progress

from benchmark import tasks as T
from benchmark.checkpointing import RunCheckpoint, check_resumable, checkpoint_path
from benchmark.config import SuiteConfig
from benchmark.methods import create
from benchmark.module import MTOModule
from benchmark.records import read_record, record_path, write_json_atomic, write_text_atomic
from benchmark.run_log import RunLog, run_log
from benchmark.runner.plan import PlannedRun, create_model, module_config, run_fingerprint
from benchmark.runner.record import failure_log_path, failure_record, make_record, traceback_text

console = Console()
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


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
    module = MTOModule(model, tasks, method, module_config(suite, update_every=run.update_every))
    train_loader = dm.train_dataloader(seed=run.seed)
    callbacks, resume = [GridProgress(progress, run.run_id), log], None
    if out is not None:
        ckpt, key = checkpoint_path(out, run.run_id), run_fingerprint(suite, run)
        callbacks.append(RunCheckpoint(ckpt, key, t.checkpoint_every_n_batches, getattr(train_loader, "sampler", None),
                                       every_n_epochs=t.checkpoint_every_n_epochs))
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
    return make_record(suite, run, dm, tasks, module, trainer, wall, log)


def train_and_write(suite: SuiteConfig, run: PlannedRun, dm, progress: Progress, force: bool = False) -> Path | None:
    """Train ``run`` with its logging open (resuming from its checkpoint unless ``force``), write its record and
    drop the checkpoint; the record's path (None on DDP ranks > 0).

    A run stopped by a non-finite loss gets a ``diverged`` record (its path is returned). Any other exception
    gets a ``failed`` record with the traceback in ``<run>.failed.log`` and is raised again, with a note; the run
    keeps its checkpoint (a rerun resumes it). An earlier finished record of the same configuration is never
    replaced by a failure."""
    out = Path(suite.output_dir)
    ckpt = checkpoint_path(out, run.run_id)
    if force:
        ckpt.unlink(missing_ok=True)
    tasks = [t for t in dm.tasks if run.stl_task in (None, t.name)]
    path = record_path(out, run.run_id)
    try:
        with run_log(suite, run, T.metric_table(tasks)) as log:
            record = train_one(suite, run, dm, progress, log, out)
            if record is None:
                return None
            write_json_atomic(path, record)
            ckpt.unlink(missing_ok=True)
            failure_log_path(out, run.run_id).unlink(missing_ok=True)
            log.attach_record(path, record)
            if record["status"] != "finished":
                console.print(f"[yellow]{run.run_id}: {record['status']}: {record['status_reason']}[/]")
            return path
    except Exception as exc:
        written = _write_failure(suite, run, tasks, exc)
        if isinstance(exc, FloatingPointError) and written is not None:
            ckpt.unlink(missing_ok=True)
            console.print(f"[yellow]{run.run_id}: diverged: {exc}[/]", highlight=False)
            return written
        refused = isinstance(exc, ValueError) and str(exc).startswith(f"checkpoint {ckpt}")
        exc.add_note(f"run {run.run_id} (method {run.method!r}) failed; "
                     + (f"recorded as failed in {written}, traceback in {failure_log_path(out, run.run_id)}"
                        if written is not None else "no record was written")
                     + (f"; rerun to resume from {ckpt}" if ckpt.exists() and not refused else ""))
        raise


def _write_failure(suite: SuiteConfig, run: PlannedRun, tasks: list, exc: Exception) -> Path | None:
    """Write the ``diverged``/``failed`` record of ``run`` and its traceback log; None if it could not be
    written (disk full) or an earlier finished record of this configuration stands."""
    from lightning.pytorch.utilities import rank_zero_only

    out = Path(suite.output_dir)
    path, log = record_path(out, run.run_id), failure_log_path(out, run.run_id)
    if rank_zero_only.rank != 0:
        return None
    try:
        old = read_record(path) if path.exists() else None
    except ValueError:
        old = None
    if old is not None and old.get("status") == "finished" and old.get("fingerprint") == run_fingerprint(suite, run):
        return None
    try:
        write_text_atomic(log, traceback_text(exc))
        write_json_atomic(path, failure_record(suite, run, tasks, exc, log))
    except OSError as write_error:
        exc.add_note(f"the failure record could not be written either: {write_error}")
        return None
    return path
