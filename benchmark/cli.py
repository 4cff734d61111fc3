"""The ``mtobench`` command: run a suite, rebuild a leaderboard, list methods, upload offline W&B runs."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True, soft_wrap=True, highlight=False)


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.catalog import check_names
    from benchmark.quick_suite import build_suite, flag_origins

    suite = build_suite(args, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(suite.to_dict(), sort_keys=False), end="")
        return 0
    check_names(suite, flag_origins(args))
    if args.dry_run:
        print(grid_text(suite))
        return 0
    check_hparams(suite)
    before = set(Path(suite.output_dir, suite.name).rglob("seed*.json"))
    return train_suite(suite, args, before)


def check_hparams(suite) -> None:
    """Each method's hyper-parameter names (after its preset) are constructor arguments; a misspelt one is a usage
    error naming the method and the nearest argument (imports the methods, not Lightning)."""
    import difflib
    import inspect

    from benchmark.config import UsageError
    from benchmark.grid import resolved_hparams
    from benchmark.methods import get

    for m in suite.methods:
        accepted = sorted(set(inspect.signature(get(m.name).__init__).parameters) - {"self", "num_tasks"})
        for key in resolved_hparams(suite, m):
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UsageError(f"method {m.key!r}: unknown hyper-parameter {key!r}{hint} It accepts: "
                                 f"{', '.join(accepted)}")


def grid_text(suite) -> str:
    """``run --dry-run``: the resolved grid, one run a line, marked where a record already exists."""
    from benchmark.catalog import dataset_tasks
    from benchmark.grid import plan_runs
    from benchmark.records import record_path

    tasks = dataset_tasks(suite.dataset.name, suite.dataset.params)
    t = suite.train
    lines = [f"suite {suite.name}: dataset {suite.dataset.name} {suite.dataset.params}, model {suite.model.name} "
             f"{suite.model.params}, {t.epochs} epoch(s), batch {t.batch_size}, lr {t.lr} ({t.lr_schedule}), "
             f"seeds {suite.seeds}"]
    if tasks is None:
        lines.append(f"tasks: read from the data of {suite.dataset.name} (single-task runs not listed)")
        tasks = []
    runs = plan_runs(suite, list(tasks))
    out = Path(suite.output_dir)
    done = sum(record_path(out, r.run_id).exists() for r in runs)
    lines.append(f"{len(runs)} run(s), {done} with a record already (skipped unless --force):")
    for r in runs:
        mark = "  [record exists]" if record_path(out, r.run_id).exists() else ""
        lines.append(f"  {r.run_id}  {r.method} {r.hparams or ''}{mark}".rstrip())
    lines.append(f"records: {out / suite.name}; leaderboard: {suite.leaderboard}")
    return "\n".join(lines)


def train_suite(suite, args: argparse.Namespace, before: set[Path]) -> int:
    from benchmark.launch import JobsFailed, run
    from benchmark.report.markdown import write_leaderboard
    from benchmark.runner import RunsFailed

    failed = None
    try:
        paths = run(suite, force=args.force, launcher=args.launcher, workers=args.workers)
    except (JobsFailed, RunsFailed) as exc:
        failed, paths = exc, sorted(Path(suite.output_dir, suite.name).rglob("seed*.json"))
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # a DDP rank other than 0: rank 0 writes the records and the leaderboard
        return 0 if failed is None else 1
    out = Path(suite.leaderboard)
    note = foreign_leaderboard(out, suite.name)
    if note:
        err.print(f"[yellow]note:[/] {escape(note)}")
    write_leaderboard(Path(suite.output_dir) / suite.name, out, suite.selection, plot=True)
    print(closing_summary(suite, paths, before, out))
    if failed is not None:
        err.print(f"[red]error:[/] {escape(str(failed))}")
        return 1
    return 0


def foreign_leaderboard(path: Path, suite_name: str) -> str | None:
    """A line saying that ``path`` holds a leaderboard of other suites, which writing ``suite_name``'s replaces."""
    import re

    if not path.is_file():
        return None
    built_from = sorted(set(re.findall(r"— suite `([^`]+)`", path.read_text(encoding="utf-8", errors="replace"))))
    if not built_from or built_from == [suite_name]:
        return None
    return (f"{path} was built from suite(s) {', '.join(built_from)}; it is replaced by suite {suite_name}'s "
            "leaderboard (set leaderboard: in the suite, or --leaderboard PATH, to write elsewhere)")


def top_rows(runs_dir: Path, suite_name: str, rule: str, n: int = 3) -> list[str]:
    """The first ``n`` rows of the suite's leaderboard (its order: Δm%, lower is better), ``label Δm% mean ± std``."""
    from benchmark.records import load_records
    from benchmark.report.summary import summarize

    lines = []
    for summary in summarize(load_records(runs_dir)[0], rule):
        if summary.suite != suite_name:
            continue
        rows = [r for r in summary.rows if r.delta_m is not None][:n]
        ranked = ", ".join(f"{i}. {r.label} {r.delta_m.mean:+.2f} ± {r.delta_m.std:.2f}" for i, r in enumerate(rows, 1))
        ranked = ranked or "no Δm (see the notes of the leaderboard)"
        lines.append(f"top by Δm% vs STL (lower is better) on {summary.dataset}: {ranked}")
    return lines


def closing_summary(suite, paths: list[Path], before: set[Path], leaderboard: Path) -> str:
    """What the run did and where everything went, with the command that publishes the W&B runs."""
    from benchmark.wandb_log import resolve_mode, wandb_dir

    runs_dir = Path(suite.output_dir) / suite.name
    reused = sum(p in before for p in paths)
    lines = [f"suite {suite.name}: {len(paths)} run(s), {len(paths) - reused} trained now, {reused} reused"]
    lines += top_rows(runs_dir, suite.name, suite.selection)
    figures = sorted(leaderboard.parent.glob(f"{leaderboard.stem}*.png"))
    lines += [f"records:     {runs_dir}/", f"leaderboard: {leaderboard}",
              f"figures:     {', '.join(str(f) for f in figures) or 'none'}"]
    mode = resolve_mode(suite.logging.wandb)
    if mode == "offline":
        lines.append(f"W&B runs:    {wandb_dir(suite.output_dir)} (offline); publish with: mtobench wandb-sync "
                     f"{suite.output_dir}")
    else:
        lines.append(f"W&B runs:    {'online, project ' + suite.logging.project if mode == 'online' else 'off'}")
    return "\n".join(lines)


def cmd_submit(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.config import load_suite
    from benchmark.submit import check_lines, submit, validate_plugin

    report = validate_plugin(args.entry_point)
    console.print(f"plugin {args.entry_point!r}: every check passes:", highlight=False)
    for line in check_lines(report):
        console.print(f"  {line}", highlight=False)
    if args.suite is None:
        return 0
    out = submit(args.entry_point, load_suite(args.suite, overrides), force=args.force, launcher=args.launcher,
                 workers=args.workers, validated=True)
    console.print(f"[green]leaderboard and figures written to {out}[/]")
    return 0


def cmd_table(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.config import UsageError
    from benchmark.report.paper_tables import DataMissing, dry_run, load_protocol, resolve, run_table

    try:
        entry = resolve(args.name, args.tables)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from exc
    suite = load_protocol(entry, overrides)
    from benchmark.verification import verification_line

    print(verification_line(args.name))
    if args.dry_run:
        print(dry_run(entry, suite, args.time_steps))
        return 0
    try:
        comparison, path = run_table(entry, suite, args.out)
    except DataMissing as exc:
        return report_error(exc, 1)
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


def cut(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (an ellipsis marks a cut)."""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def listing(entries: dict[str, str]) -> str:
    """``name  summary`` lines, each cut to the terminal width."""
    width = shutil.get_terminal_size((100, 24)).columns
    pad = max(map(len, entries), default=0) + 2
    return "\n".join(cut(f"{name:<{pad}}{summary}", width) for name, summary in entries.items())


def cmd_list(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark import catalog

    entries = {
        "methods": catalog.method_names,
        "datasets": lambda: {n: f"{i.summary} [model {i.model}]" for n, i in catalog.DATASETS.items()},
        "models": lambda: dict(catalog.MODELS),
        "suites": catalog.suites,
        "tables": catalog.tables,
    }[args.what]()
    print(listing(dict(sorted(entries.items()))))
    return 0


def cmd_methods(args: argparse.Namespace, overrides: list[str]) -> int:
    from benchmark.catalog import method_names
    from benchmark.config import UsageError
    from benchmark.names import unknown_name

    if args.name is not None and args.name not in method_names():
        raise UsageError(unknown_name("method", args.name, method_names()).args[0])
    from benchmark.methods import Method, available, get
    from benchmark.methods.registry import PLUGIN_ERRORS, PLUGIN_ORIGINS

    if args.name is not None:
        print(method_card(get(args.name), PLUGIN_ORIGINS.get(args.name, "built-in")))
        return 0
    rows = {}
    for name in available():
        cls = get(name)
        needs = "own step" if cls.own_step is not Method.own_step else cls.needs.value
        rows[name] = f"{needs:<9} {cls.__module__:<28} {' '.join((cls.__doc__ or '').split())}"
    print(listing(rows))
    for name, why in PLUGIN_ERRORS.items():
        err.print(f"[yellow]plugin {name!r} not loaded:[/] {escape(why)}")
    return 0


def method_card(cls, origin: str) -> str:
    """``mtobench methods NAME``: the paper (the docstring's first paragraph), the hyper-parameters with their
    defaults and annotations, and where the method comes from."""
    import inspect

    paragraphs = (inspect.getdoc(cls) or "").split("\n\n")
    lines = [f"{cls.registry_name}  ({cls.__module__}.{cls.__qualname__}; {origin})", "",
             " ".join(paragraphs[0].split()), "", "hyper-parameters (default):"]
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name == "num_tasks" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "required" if p.default is p.empty else repr(p.default)
        note = f"  [{p.annotation}]" if p.annotation is not p.empty else ""
        lines.append(f"  {p.name} = {default}{note}")
    if len(lines) == 5:
        lines.append("  none")
    lines.append(f"needs: {cls.needs.value}")
    return "\n".join(lines)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", default="none", choices=("none", "local", "slurm"),
                        help="none: train in this process; local/slurm: one submitit job per run (suite 'launcher')")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at once: worker processes sharing this machine's CPU threads (none), "
                             "jobs (local), or the SLURM array parallelism when > 1")


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on stderr (exit 2) with the nearest option or choice."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{suggestion(self, message)}\n"
                     f"(see {self.prog} --help)\n")


def suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """``; did you mean ...?`` for an unknown option or an invalid choice named in argparse's ``message``."""
    import difflib
    import re

    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        known = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
        close = difflib.get_close_matches(choice.group(1), known, n=1, cutoff=0.5)
        return f"; did you mean {close[0]!r}?" if close else ""
    unknown = re.search(r"unrecognized arguments: (\S+)", message)
    if unknown:
        flag = unknown.group(1).split("=", 1)[0]
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        return f"; did you mean {close[0]}?" if close else ""
    return ""


def build_parser() -> argparse.ArgumentParser:
    from benchmark.catalog import TABLES_FILE
    from benchmark.scoring import SELECTION_RULES

    parser = Parser(prog="mtobench", description="Benchmark multi-task optimization methods.")
    parser.add_argument("--version", action="version", version=f"mtobench {mtobench_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="train a suite (skips runs that already have a record) and write its leaderboard",
                         epilog="Any suite field can be overridden: --suite.seeds=[0] --suite.train.epochs=1. "
                                "Without a suite file: mtobench run --method ew --dataset synthetic_scenes")
    run.add_argument("suite_file", nargs="?", help="suite YAML or a suite name (mtobench list suites)")
    run.add_argument("--method", nargs="+", help="method(s) to train, replacing the suite's (mtobench list methods)")
    run.add_argument("--dataset", help="dataset, with its default params and model (mtobench list datasets)")
    run.add_argument("--model", help="model, replacing the suite's or the dataset's (mtobench list models)")
    run.add_argument("--epochs", type=int, help="train.epochs")
    run.add_argument("--batch-size", type=int, help="train.batch_size")
    run.add_argument("--lr", type=float, help="train.lr")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds, e.g. --seeds 0 1")
    run.add_argument("--name", help="suite name (records go to <output_dir>/<name>)")
    run.add_argument("--output-dir", help="output_dir: where records and W&B runs go (default runs)")
    run.add_argument("--leaderboard", help="leaderboard path (default <output_dir>/<name>/leaderboard.md)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved grid; train nothing")
    run.add_argument("--print-config", action="store_true", help="print the resolved suite as YAML; train nothing")
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
                           epilog="Names: mtobench list tables; suite fields can be overridden.")
    table.add_argument("name", help="e.g. nashmtl-cityscapes, cso-nyud, cso-ablation")
    table.add_argument("--dry-run", action="store_true", help="show the grid and an estimated cost; train nothing")
    table.add_argument("--time-steps", type=int, default=0, metavar="N",
                       help="with --dry-run: time N real training steps here for the estimate (slow on CPU)")
    table.add_argument("--out", help="where to write the comparison (default: beside the suite's records)")
    table.add_argument("--tables", default=str(TABLES_FILE), help="the table registry")
    table.set_defaults(func=cmd_table)
    lister = sub.add_parser("list", help="list what exists: methods, datasets, models, suites or paper tables")
    lister.add_argument("what", choices=("methods", "datasets", "models", "suites", "tables"))
    lister.set_defaults(func=cmd_list)
    methods = sub.add_parser("methods", help="the built-in and plugin methods, or one method's hyper-parameters")
    methods.add_argument("name", nargs="?", help="a method: show its paper, hyper-parameters and defaults")
    methods.set_defaults(func=cmd_methods)
    upload = sub.add_parser("wandb-sync", help="upload the offline W&B runs found below a runs folder (wandb sync)")
    upload.add_argument("runs_dir")
    upload.add_argument("--project", help="override the W&B project of every run")
    upload.add_argument("--entity", help="override the W&B entity of every run")
    upload.add_argument("--include-synced", action="store_true", help="upload runs wandb has already synced, again")
    upload.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    upload.set_defaults(func=cmd_wandb_sync)
    return parser


def mtobench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtobench")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without, and the ``--suite.<key>[=]value`` overrides (taken out before argparse, which reads a
    flag holding a space, such as ``--suite.seeds=[0, 1]``, as a positional argument)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--suite."):
            takes_next = "=" not in item and i + 1 < len(argv)
            overrides += argv[i:i + 2] if takes_next else [item]
            i += 2 if takes_next else 1
        else:
            rest.append(item)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    from benchmark.config import UsageError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(rest)
    if extra:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides and args.command not in ("run", "submit", "table"):
        parser.error(f"mtobench {args.command} takes no suite overrides: {' '.join(overrides)}")
    try:
        return args.func(args, overrides)
    except (UsageError, FileNotFoundError) as exc:
        if isinstance(exc, FileNotFoundError) and not str(exc).startswith("suite file"):
            return report_error(exc, 1)
        return report_error(exc, 2)
    except (ValueError, KeyError, OSError, FloatingPointError) as exc:
        return report_error(exc, 1)


def report_error(exc: BaseException, code: int) -> int:
    """Print ``exc`` (and its notes) on stderr, unwrapped, and return ``code``."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    notes = "".join(f"\n  {note}" for note in getattr(exc, "__notes__", []))
    err.print(f"[red]error:[/] {escape(str(message) + notes)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
