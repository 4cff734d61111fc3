"""The ``mtobench`` command: run a suite, rebuild a leaderboard, list methods."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.config import load_suite
    from benchmark.leaderboard import write_leaderboard
    from benchmark.runner import run_suite

    suite = load_suite(args.suite_file, overrides)
    run_suite(suite, force=args.force)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # a DDP rank other than 0: rank 0 writes the records and the leaderboard
        return 0
    out = Path(suite.leaderboard)
    write_leaderboard(Path(suite.output_dir) / suite.name, out, suite.selection, plot=True)
    console.print(f"[green]leaderboard written to {out} (plots beside it)[/]")
    return 0


def cmd_leaderboard(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.leaderboard import write_leaderboard

    write_leaderboard(Path(args.runs_dir), Path(args.out), args.rule)
    console.print(f"[green]leaderboard written to {args.out}[/]")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    from benchmark.scoring import SELECTION_RULES

    parser = argparse.ArgumentParser(prog="mtobench", description="Benchmark multi-task optimization methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a suite (skips runs that already have a record) and write its leaderboard",
                         epilog="Any suite field can be overridden: --suite.seeds=[0] --suite.train.epochs=1")
    run.add_argument("suite_file")
    run.add_argument("--force", action="store_true", help="retrain runs that already have a record")
    run.set_defaults(func=cmd_run)
    board = sub.add_parser("leaderboard", help="rebuild leaderboard.md from a folder of run records")
    board.add_argument("runs_dir")
    board.add_argument("--out", default="leaderboard.md")
    board.add_argument("--rule", default="last", choices=SELECTION_RULES)
    board.set_defaults(func=cmd_leaderboard)
    methods = sub.add_parser("methods", help="list the built-in and plugin methods")
    methods.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command != "run":
        console.print(f"[red]mtobench {args.command}: unexpected arguments {rest}[/]")
        return 2
    try:
        return args.func(args, rest)
    except (ValueError, KeyError, OSError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        notes = "".join(f"\n  {note}" for note in getattr(exc, "__notes__", []))
        console.print(f"[red]error:[/] {message}{notes}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
