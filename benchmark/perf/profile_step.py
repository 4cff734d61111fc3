"""Where the time of a suite's training goes: one training step through the real Lightning path
(``benchmark.runner.train_one``) against the bare forward + backward + Adam step on the same model and batches.

Everything is measured in one process, block after block (bare, Lightning, bare again, so drift hits both),
and reported as ratios to the bare step. The Lightning run is timed by a callback riding on the runner's own
``RunLog``:

* ``batch``: ``on_train_batch_start`` to ``on_train_batch_end`` (the module's ``training_step`` and the loop's
  hooks);
* ``gap``: ``on_train_batch_end`` to the next ``on_train_batch_start`` (data loading and collation, the loop);
* ``inner``: the module's own ``step_times`` (inside ``training_step``, logging probes excluded);
* ``val``: one validation pass (val and test splits, with the metrics) per epoch, against the epoch's training.

Also reported: the thread settings seen inside ``fit``, the DataLoader's cost per batch alone, the metric
updates' share of validation and the cost of opening and finishing an offline W&B run.

Usage: ``python -m benchmark.perf.profile_step [--suite configs/suites/default.yaml] [--methods ew upgrad]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from rich.progress import Progress

from benchmark import tasks as T
from benchmark.config import load_suite
from benchmark.methods import create
from benchmark.run_log import RunLog
from benchmark.runner import PlannedRun, create_datamodule, create_model, resolved_hparams, train_one


class StepClock(RunLog):
    """The runner's logging callback, plus wall-clock marks around every batch and validation pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batch: list[float] = []
        self.gap: list[float] = []
        self.val: list[float] = []
        self.train_epoch: list[float] = []
        self.threads: tuple[int, int] | None = None
        self._mark = self._end = self._epoch = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.threads = (torch.get_num_threads(), torch.get_num_interop_threads())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch, self._end = time.perf_counter(), 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark = time.perf_counter()
        if self._end:
            self.gap.append(self._mark - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._end = time.perf_counter()
        self.batch.append(self._end - self._mark)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.train_epoch.append(time.perf_counter() - self._epoch)
        self._mark = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val.append(time.perf_counter() - self._mark)


def bare_stepper(suite, dm, tasks, task_bn: bool):
    """The floor: forward, summed-loss backward and an Adam step of the same model, no Lightning."""
    torch.manual_seed(0)
    model = create_model(suite, tasks, {"task_bn": True} if task_bn else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=suite.train.lr)

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        if task_bn:
            losses = [T.task_loss(t, model.head(t.name, model.encode(batch["image"], t.name)),
                                  batch["targets"][t.name]) for t in tasks]
        else:
            z = model.encode(batch["image"])
            losses = [T.task_loss(t, model.head(t.name, z), batch["targets"][t.name]) for t in tasks]
        torch.stack(losses).sum().backward()
        optimizer.step()

    return model, step


def time_bare(step, batches: list[dict], warmup: int = 2) -> list[float]:
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_loader(loader) -> float:
    """Seconds per batch of iterating the DataLoader alone (indexing and collation)."""
    start, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
    return (time.perf_counter() - start) / max(n, 1)


@torch.no_grad()
def time_eval(model, tasks, loaders, metrics: bool) -> float:
    """Seconds of one eval-mode pass over ``loaders``, with or without the metric updates."""
    model.eval()
    made = {t.name: T.make_metric(t) for t in tasks}
    start = time.perf_counter()
    for loader in loaders:
        for batch in loader:
            z = model.encode(batch["image"])
            for t in tasks:
                raw = model.head(t.name, z)
                if metrics:
                    made[t.name].update(raw, batch["targets"][t.name])
                    T.task_loss(t, raw, batch["targets"][t.name])
    if metrics:
        for m in made.values():
            m.compute()
    model.train()
    return time.perf_counter() - start


def time_wandb(out: Path) -> float | None:
    """Seconds to open and finish one offline W&B run (None if wandb is not installed)."""
    try:
        from benchmark.wandb_log import open_run
    except ImportError:
        return None
    start = time.perf_counter()
    run = open_run("offline", str(out), "mtobench-profile", None, group="profile", job_type="profile",
                   name="profile", config={})
    run.log({"x": 1.0}, step=0)
    run.finish()
    return time.perf_counter() - start


def profile_method(suite, dm, method_key: str, epochs: int, progress: Progress) -> dict:
    m = next(x for x in suite.methods if x.key == method_key)
    run = PlannedRun(m.name, resolved_hparams(suite, m), 0, f"profile/{m.key}/seed0",
                     model_overrides=dict(m.model), update_every=m.update_every)
    short = dataclasses.replace(suite, train=dataclasses.replace(suite.train, epochs=epochs),
                                logging=dataclasses.replace(suite.logging, wandb="off"))
    tasks = list(dm.tasks)
    task_bn = bool(m.model.get("task_bn"))
    batches = list(dm.train_dataloader(seed=0))
    _, bare = bare_stepper(suite, dm, tasks, task_bn)
    before = time_bare(bare, batches)
    clock = StepClock()
    start = time.perf_counter()
    record = train_one(short, run, dm, progress, clock)
    fit_wall = time.perf_counter() - start
    after = time_bare(bare, batches)
    base = statistics.median(before + after)
    steps = len(clock.batch)
    return {
        "method": m.key, "bare_s": base, "bare_drift": statistics.median(after) / statistics.median(before),
        "batch": statistics.median(clock.batch[1:]) / base, "inner": record["timing"]["step_time_median_s"] / base,
        "gap": statistics.median(clock.gap) / base if clock.gap else float("nan"),
        "val_share": sum(clock.val) / fit_wall, "train_share": sum(clock.batch) / fit_wall,
        "fit_per_step": fit_wall / steps / base, "threads": clock.threads, "steps": steps,
        "val_per_epoch_over_train_epoch": statistics.median(v / t for v, t in zip(clock.val, clock.train_epoch)),
        "fit_wall_s": fit_wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="configs/suites/default.yaml")
    parser.add_argument("--methods", nargs="+", default=["ew"], help="method labels of the suite")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    suite = load_suite(args.suite)
    dm = create_datamodule(suite)
    dm.prepare_data()
    dm.setup("fit")
    for key in args.methods:
        m = next((x for x in suite.methods if x.key == key), None)
        if m is None:
            raise SystemExit(f"{args.suite}: no method labelled {key!r}; have {[x.key for x in suite.methods]}")
        create(m.name, len(dm.tasks), **resolved_hparams(suite, m))
    lines = [f"# Step profile of `{args.suite}` (torch {torch.__version__}, "
             f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op threads outside fit)",
             "", "Ratios to the bare forward + summed-loss backward + Adam step on the same model and batches "
             "(`bare`), measured in this one process.", "",
             "| method | batch ×bare | inner step ×bare | gap ×bare | fit/step ×bare | val ÷ train epoch | "
             "val share of fit | threads in fit (intra, inter) | bare drift |", "|---|---|---|---|---|---|---|---|---|"]
    with Progress() as progress:
        results = [profile_method(suite, dm, key, args.epochs, progress) for key in args.methods]
    for r in results:
        lines.append(f"| {r['method']} | {r['batch']:.2f} | {r['inner']:.2f} | {r['gap']:.3f} | {r['fit_per_step']:.2f} "
                     f"| {r['val_per_epoch_over_train_epoch']:.3f} | {r['val_share']:.3f} | {r['threads']} "
                     f"| {r['bare_drift']:.2f} |")
    torch.manual_seed(0)
    model, _ = bare_stepper(suite, dm, list(dm.tasks), False)
    loaders = [dm.val_dataloader(), dm.test_dataloader()]
    bare_s = results[0]["bare_s"]
    loader_s = time_loader(dm.train_dataloader(seed=0))
    forward_only = time_eval(model, dm.tasks, loaders, metrics=False)
    with_metrics = time_eval(model, dm.tasks, loaders, metrics=True)
    wandb_s = time_wandb(Path(suite.output_dir) / "profile-wandb")
    lines += ["", f"- DataLoader alone (index + collate, num_workers={dm.num_workers}): "
              f"{loader_s / bare_s:.3f} × bare per batch.",
              f"- Validation (val + test splits): with metric updates ÷ forward only = {with_metrics / forward_only:.2f}; "
              f"forward-only pass = {forward_only / bare_s:.1f} × bare step.",
              f"- bare step on this machine now: {bare_s * 1e3:.0f} ms (for scale only; compare ratios)."]
    if wandb_s is not None:
        lines.append(f"- One offline W&B run opened and finished: {wandb_s / bare_s:.0f} × bare step "
                     f"({wandb_s:.1f} s).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
