"""The ``mtobench`` command: run a suite, rebuild a leaderboard, list methods, upload offline W&B runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.config import load_suite
    from benchmark.launch import JobsFailed, run
    from benchmark.report.markdown import write_leaderboard

    if args.no_wandb:
        overrides = [*overrides, "--suite.logging.wandb", "off"]
    from benchmark.runner import RunsFailed

    suite = load_suite(args.suite_file, overrides)
    failed = None
    try:
        run(suite, force=args.force, launcher=args.launcher, workers=args.workers)
    except (JobsFailed, RunsFailed) as exc:
        failed = exc
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # a DDP rank other than 0: rank 0 writes the records and the leaderboard
        return 0 if failed is None else 1
    out = Path(suite.leaderboard)
    write_leaderboard(Path(suite.output_dir) / suite.name, out, suite.selection, plot=True)
    console.print(f"[green]leaderboard written to {out} (plots beside it)[/]")
    if failed is not None:
        console.print(f"[red]error:[/] {escape(str(failed))}", highlight=False)
        return 1
    return 0


def cmd_submit(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.config import load_suite
    from benchmark.submit import submit, validate_plugin

    if args.suite is None:
        validate_plugin(args.entry_point)
        console.print(f"[green]plugin {args.entry_point!r} passes every check[/]")
        return 0
    out = submit(args.entry_point, load_suite(args.suite, overrides), force=args.force, launcher=args.launcher,
                 workers=args.workers)
    console.print(f"[green]plugin {args.entry_point!r} validated; leaderboard written to {out}[/]")
    return 0


def cmd_table(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.report.paper_tables import DataMissing, dry_run, load_protocol, resolve, run_table

    entry = resolve(args.name, args.tables)
    suite = load_protocol(entry, overrides)
    if args.dry_run:
        console.print(dry_run(entry, suite), highlight=False)
        return 0
    try:
        comparison, path = run_table(entry, suite, args.out)
    except DataMissing as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return 1
    console.print(comparison.markdown, highlight=False, markup=False)
    console.print(f"[green]comparison written to {path}[/]")
    return 0


def cmd_leaderboard(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.report.markdown import write_leaderboard

    write_leaderboard(Path(args.runs_dir), Path(args.out), args.rule, plot=True)
    console.print(f"[green]leaderboard written to {args.out} (plots beside it)[/]")
    return 0


def cmd_wandb_sync(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.wandb_log import sync

    command, code = sync(args.runs_dir, project=args.project, entity=args.entity,
                         include_synced=args.include_synced, dry_run=args.dry_run)
    if code:
        console.print(f"[red]wandb sync failed (exit {code}): {' '.join(command)}[/]", highlight=False)
    return code


def cmd_methods(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.methods import Method, available, get
    from benchmark.methods.registry import PLUGIN_ERRORS

    table = Table("method", "needs", "defined in", "summary")
    for name in available():
        cls = get(name)
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        needs = "own step" if cls.own_step is not Method.own_step else cls.needs.value
        table.add_row(name, needs, cls.__module__, paragraph if len(paragraph) <= 160 else paragraph[:159] + "…")
    console.print(table)
    for name, why in PLUGIN_ERRORS.items():
        console.print(f"[yellow]plugin {name!r} not loaded: {why}[/]")
    return 0


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", default="none", choices=("none", "local", "slurm"),
                        help="none: train in this process; local/slurm: one submitit job per run (suite 'launcher')")
    parser.add_argument("--workers", type=int, default=1,
                        help="jobs running at once (local), or the SLURM array parallelism when > 1")


def build_parser() -> argparse.ArgumentParser:
    from benchmark.report.paper_tables import TABLES_FILE
    from benchmark.scoring import SELECTION_RULES

    parser = argparse.ArgumentParser(prog="mtobench", description="Benchmark multi-task optimization methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a suite (skips runs that already have a record) and write its leaderboard",
                         epilog="Any suite field can be overridden: --suite.seeds=[0] --suite.train.epochs=1")
    run.add_argument("suite_file")
    run.add_argument("--force", action="store_true", help="retrain runs that already have a record")
    run.add_argument("--no-wandb", action="store_true", help="no W&B logging (same as --suite.logging.wandb=off)")
    add_launcher_arguments(run)
    run.set_defaults(func=cmd_run)
    submit = sub.add_parser("submit", help="validate a method plugin (entry point) and run it on a suite",
                            epilog="Without --suite only the validation runs.")
    submit.add_argument("entry_point", help="the plugin's name in the mtobench.methods entry-point group")
    submit.add_argument("--suite", help="suite YAML to run the plugin on, next to the suite's methods")
    submit.add_argument("--force", action="store_true", help="retrain runs that already have a record")
    add_launcher_arguments(submit)
    submit.set_defaults(func=cmd_submit)
    board = sub.add_parser("leaderboard", help="rebuild leaderboard.md from a folder of run records")
    board.add_argument("runs_dir")
    board.add_argument("--out", default="leaderboard.md")
    board.add_argument("--rule", default="last", choices=SELECTION_RULES)
    board.set_defaults(func=cmd_leaderboard)
    table = sub.add_parser("table", help="run a paper's protocol and compare with its published table",
                           epilog="Names are listed in configs/tables.yaml; suite fields can be overridden.")
    table.add_argument("name", help="e.g. nashmtl-cityscapes, cso-nyud, cso-ablation")
    table.add_argument("--dry-run", action="store_true", help="show the grid and an estimated cost; train nothing")
    table.add_argument("--out", help="where to write the comparison (default: beside the suite's records)")
    table.add_argument("--tables", default=str(TABLES_FILE), help="the table registry")
    table.set_defaults(func=cmd_table)
    methods = sub.add_parser("methods", help="list the built-in and plugin methods")
    methods.set_defaults(func=cmd_methods)
    upload = sub.add_parser("wandb-sync", help="upload the offline W&B runs found below a runs folder (wandb sync)")
    upload.add_argument("runs_dir")
    upload.add_argument("--project", help="override the W&B project of every run")
    upload.add_argument("--entity", help="override the W&B entity of every run")
    upload.add_argument("--include-synced", action="store_true", help="upload runs wandb has already synced, again")
    upload.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    upload.set_defaults(func=cmd_wandb_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command not in ("run", "submit", "table"):
        console.print(f"[red]mtobench {args.command}: unexpected arguments {rest}[/]")
        return 2
    try:
        return args.func(args, rest)
    except (ValueError, KeyError, OSError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        notes = "".join(f"\n  {note}" for note in getattr(exc, "__notes__", []))
        console.print(f"[red]error:[/] {escape(str(message) + notes)}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
