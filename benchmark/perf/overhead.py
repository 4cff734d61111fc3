"""Before/after the default suite's overhead cuts: the fit time per training step of EW and a Jacobian method,
measured side by side in one process.

``before`` trains with the library defaults of the settings the default suite changes to save time outside the
step (evaluate and checkpoint every epoch, time both Jacobian paths on the first step, log gradient statistics
every 10 batches); ``after`` with the suite's own values. Each round trains every (method, setting) pair once
through the runner's ``train_one`` (checkpointing into a temporary folder, W&B off), in turn, so drift hits all
alike; the table gives medians over rounds, as ratios. A bare forward + summed-loss backward + Adam step on the
same model and batches is the unit.

Usage: ``python -m benchmark.perf.overhead [--suite configs/suites/default.yaml] [--methods ew upgrad-u4]
[--rounds 3] [--out perf.md]`` (``--out`` replaces this tool's section of that file).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import Progress

from benchmark.config import SuiteConfig, TrainConfig, load_suite
from benchmark.perf.profile_step import bare_stepper, time_bare
from benchmark.records import git_state, write_text_atomic
from benchmark.runner import PlannedRun, create_datamodule, resolved_hparams, train_one

CUT_FIELDS = ("eval_every_n_epochs", "checkpoint_every_n_epochs", "jacobian_mode")
"""``train`` fields whose library default (``before``) the suite may replace (``after``), with
``logging.log_every_n_steps``."""
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


def settings(suite: SuiteConfig) -> dict[str, SuiteConfig]:
    """The suite with the library defaults of the cut fields (``before``) and as it is (``after``)."""
    defaults = TrainConfig()
    before = dataclasses.replace(
        suite, train=dataclasses.replace(suite.train, **{f: getattr(defaults, f) for f in CUT_FIELDS}),
        logging=dataclasses.replace(suite.logging, log_every_n_steps=10))
    return {"before": before, "after": suite}


def changed(suite: SuiteConfig) -> list[str]:
    before = settings(suite)["before"]
    out = [f"train.{f}: {getattr(before.train, f)} → {getattr(suite.train, f)}" for f in CUT_FIELDS
           if getattr(before.train, f) != getattr(suite.train, f)]
    if suite.logging.log_every_n_steps != 10:
        out.append(f"logging.log_every_n_steps: 10 → {suite.logging.log_every_n_steps}")
    return out


def fit_per_step(suite: SuiteConfig, key: str, dm, progress: Progress) -> float:
    m = next(x for x in suite.methods if x.key == key)
    run = PlannedRun(m.name, resolved_hparams(suite, m), 0, f"overhead/{m.key}/seed0",
                     model_overrides=dict(m.model), update_every=m.update_every)
    quiet = dataclasses.replace(suite, logging=dataclasses.replace(suite.logging, wandb="off"))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        record = train_one(quiet, run, dm, progress, out=Path(out))
        wall = time.perf_counter() - start
    return wall / record["timing"]["steps"]


def measure(suite: SuiteConfig, methods: list[str], rounds: int) -> dict:
    dm = create_datamodule(suite)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader(seed=0))
    _, bare = bare_stepper(suite, dm, list(dm.tasks), False)
    times: dict[tuple[str, str], list[float]] = {}
    bare_times: list[float] = []
    with Progress() as progress:
        bar = progress.add_task("rounds", total=rounds * len(methods) * 2)
        for _ in range(rounds):
            bare_times += time_bare(bare, batches)
            for key in methods:
                for name, variant in settings(suite).items():
                    times.setdefault((key, name), []).append(fit_per_step(variant, key, dm, progress))
                    progress.advance(bar)
    return {"bare_s": statistics.median(bare_times), "fit": {k: statistics.median(v) for k, v in times.items()}}


def report(suite_path: str, suite: SuiteConfig, methods: list[str], rounds: int, result: dict) -> str:
    bare = result["bare_s"]
    fit = result["fit"]
    lines = [BEGIN, f"## Overhead cuts of `{suite_path}`: before ÷ after, one run", "",
             f"`python -m benchmark.perf.overhead --suite {suite_path}`: {rounds} rounds, medians; commit "
             f"`{git_state()['git_commit'] or 'unknown'}`; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads. "
             f"Changed settings: {', '.join(changed(suite)) or 'none'}. Fit time per step = train_one's wall time "
             "(checkpoints, evaluations, probes included; W&B off) ÷ training steps; the unit is a bare forward + "
             "summed-loss backward + Adam step of the same model and batches.", "",
             "| method | before: fit/step ×bare | after: fit/step ×bare | after ÷ before | before ÷ EW before "
             "| after ÷ EW after |", "|---|---|---|---|---|---|"]
    ew = methods[0]
    for key in methods:
        b, a = fit[(key, "before")], fit[(key, "after")]
        lines.append(f"| {key} | {b / bare:.2f} | {a / bare:.2f} | {a / b:.2f} | {b / fit[(ew, 'before')]:.2f} "
                     f"| {a / fit[(ew, 'after')]:.2f} |")
    lines += ["", f"(bare step here, for scale only: {bare * 1e3:.1f} ms)", END]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="configs/suites/default.yaml")
    parser.add_argument("--methods", nargs="+", default=["ew", "upgrad-u4"],
                        help="method labels of the suite; the first is the reference of the ÷ EW columns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="replace this tool's section of this markdown file")
    args, overrides = parser.parse_known_args(argv)
    suite = load_suite(args.suite, overrides)
    for key in args.methods:
        if not any(m.key == key for m in suite.methods):
            raise SystemExit(f"{args.suite}: no method labelled {key!r}; have {[m.key for m in suite.methods]}")
    section = report(args.suite, suite, args.methods, args.rounds, measure(suite, args.methods, args.rounds))
    print(section)
    if args.out:
        replace_section(Path(args.out), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
