"""``mtobench table <name>``: run a paper's protocol suite and print our numbers next to the published table.

``configs/tables.yaml`` maps each name to its protocol suite and its table in ``reference_tables.yaml``. The
comparison shows, per method, the published row, ours (mean ± std over seeds, by the suite's selection rule)
and the difference, with Δ computed by the table's own definition (``recompute_table``'s) on our seed means.
Published Δ values that do not recompute from their row, beyond rounding, are flagged.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import SuiteConfig, load_suite
from benchmark.names import unknown_name
from benchmark.records import REPO_ROOT
from benchmark.report.baselines import metric_key_map
from benchmark.report.summary import DatasetSummary, MethodRow
from benchmark.scoring import _table_delta, recompute_table

TABLES_FILE = REPO_ROOT / "configs" / "tables.yaml"
ARROWS = {"higher": "↑", "lower": "↓"}


@dataclass(frozen=True)
class TableEntry:
    """One ``mtobench table`` target."""

    name: str
    suite: Path
    reference: str
    train_size: int
    input_shape: tuple[int, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    """Published row name -> our method label, where the names differ beyond case and punctuation."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Published metric name -> our record key (``<task>/<metric>``), where the metric names differ."""


def load_registry(path: str | Path = TABLES_FILE) -> dict[str, TableEntry]:
    """The entries of ``configs/tables.yaml``; a missing field is an error naming the file, entry and field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table registry {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    shared_aliases = dict(data.get("aliases") or {})
    entries = {}
    for name, spec in (data.get("tables") or {}).items():
        missing = [k for k in ("suite", "reference", "train_size", "input_shape") if k not in (spec or {})]
        if missing:
            raise ValueError(f"{path}: table {name!r} lacks field(s) {missing}")
        suite = Path(spec["suite"])
        entries[name] = TableEntry(name, suite if suite.is_absolute() else path.parent.parent / suite,
                                   str(spec["reference"]), int(spec["train_size"]), tuple(spec["input_shape"]),
                                   {**shared_aliases, **(spec.get("aliases") or {})}, dict(spec.get("metrics") or {}))
    return entries


def resolve(name: str, path: str | Path = TABLES_FILE) -> TableEntry:
    entries = load_registry(path)
    if name not in entries:
        raise unknown_name("table", name, entries, str(path))
    return entries[name]


def load_protocol(entry: TableEntry, overrides: Sequence[str] = ()) -> SuiteConfig:
    """The entry's suite; its own ``reference_table``, when set, must be the entry's ``reference``."""
    suite = load_suite(entry.suite, list(overrides))
    if suite.reference_table not in (None, entry.reference):
        raise ValueError(f"table {entry.name!r}: suite file {entry.suite} has reference_table="
                         f"{suite.reference_table!r}, but the table registry says {entry.reference!r}")
    return suite


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def match_rows(published: Sequence[str], ours: Sequence[str], aliases: Mapping[str, str]) -> dict[str, str | None]:
    """Published method name -> our row label: equal after dropping case and punctuation (``Nash-MTL`` =
    ``nash_mtl``), else through ``aliases``; None when we have no such row."""
    by_norm = {_norm(label): label for label in ours}
    return {name: by_norm.get(_norm(name)) or (by_norm.get(_norm(aliases[name])) if name in aliases else None)
            for name in published}


def _fmt(value: float | None, decimals: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def _decimals(values: Sequence[Any]) -> int:
    """As many decimals as the published column prints (at least 2)."""
    found = [len(repr(float(v)).split(".")[1].rstrip("0")) for v in values if v is not None]
    return max([2, *found])


def table_metric_keys(table: Mapping[str, Any], record_keys: Sequence[str],
                      metric_aliases: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Published metric name -> our record key (on ``<metric>``, else through ``metric_aliases``, the entry's
    ``metrics`` map of ``configs/tables.yaml``), and the published names left unmatched."""
    names = [m["key"] for m in table.get("metrics") or [] if "key" in m]
    keys = {**metric_key_map(names, record_keys),
            **{n: k for n, k in (metric_aliases or {}).items() if n in names and k in record_keys}}
    return keys, [n for n in names if n not in keys]


@dataclass
class Comparison:
    """What ``mtobench table`` reports: the Markdown text and the flagged published rows."""

    markdown: str
    flagged: list[str]
    unmatched_metrics: list[str]


def compare(table: Mapping[str, Any], summary: DatasetSummary, aliases: Mapping[str, str], title: str,
            metric_aliases: Mapping[str, str] | None = None) -> Comparison:
    """Our summary next to the published ``table`` (a ``reference_tables.yaml`` entry); published metric names
    match our ``<task>/<metric>`` keys on ``<metric>``, or through ``metric_aliases``."""
    metrics = [m for m in table.get("metrics") or [] if "key" in m]
    names = [m["key"] for m in metrics]
    keys, unmatched = table_metric_keys(table, [s.key for s in summary.metrics], metric_aliases)
    delta = _table_delta(table)
    delta_name = (table.get("delta") or {}).get("name", "Δ")
    baseline = {n: summary.baseline[k] for n, k in keys.items() if k in summary.baseline}
    recomputed = {r["method"]: r for r in recompute_table(table)}
    rows = table.get("rows") or []
    ours = {r.label: r for r in summary.rows}
    matched = match_rows([r["method"] for r in rows], list(ours), aliases)
    decimals = {n: _decimals([r.get("values", {}).get(n) for r in rows]) for n in names}
    header = ["method", "row", *(f"{n} {ARROWS.get(m['direction'], '')}".rstrip() for n, m in zip(names, metrics,
                                                                                                   strict=True)),
              delta_name]
    body, flagged = [], []

    def our_delta(row: MethodRow) -> float | None:
        if delta is None or not row.metrics:
            return None
        fn, dirs = delta
        if any(k not in keys or k not in baseline for k in dirs):
            return None
        return fn({k: row.metrics[keys[k]].mean for k in dirs}, baseline)

    for r in rows:
        values = r.get("values") or {}
        check = recomputed.get(r["method"], {})
        reported = r.get("delta_reported")
        cell = _fmt(reported, 2)
        if check.get("flagged") and not check.get("explained_by_rounding"):
            cell += f" ⚠ recomputes to {check['delta']:.2f}"
            flagged.append(f"{r['method']}: published {delta_name} {reported} recomputes to {check['delta']:.2f} "
                           f"from its row{' (' + r['note'] + ')' if r.get('note') else ''}")
        body.append([r["method"], "published", *(_fmt(values.get(n), decimals[n]) for n in names), cell])
        label = matched[r["method"]]
        if label is None:
            continue
        row = ours.pop(label)
        body.append(_our_line(label, row, names, keys, decimals, our_delta(row)))
        mine = our_delta(row)
        body.append(["", "difference", *(
            _fmt(row.metrics[keys[n]].mean - values[n], decimals[n]) if n in keys and n in values else "—"
            for n in names), _fmt(None if mine is None or reported is None else mine - reported, 2)])
    for label, row in ours.items():
        body.append(_our_line(label, row, names, keys, decimals, our_delta(row)))
    published_stl = (table.get("baseline") or {}).get("values") or {}
    if published_stl or baseline:
        body.append([(table.get("baseline") or {}).get("method", "STL"), "published baseline",
                     *(_fmt(published_stl.get(n), decimals[n]) for n in names), ""])
        body.append(["STL", "our baseline", *(_fmt(baseline.get(n), decimals[n]) for n in names), ""])
    return Comparison(_markdown(table, summary, title, header, body, flagged, unmatched, baseline), flagged, unmatched)


def _our_line(label, row: MethodRow, names, keys, decimals, delta: float | None) -> list[str]:
    def cell(stats, digits: int) -> str:
        mean = _fmt(stats.mean, digits)
        return mean if stats.n == 1 else f"{mean} ± {_fmt(stats.std, digits)}"

    cells = [cell(row.metrics[keys[n]], decimals[n]) if n in keys else "—" for n in names]
    return [label, f"ours ({len(row.seeds)} seeds)", *cells, _fmt(delta, 2)]


def _markdown(table, summary, title, header, body, flagged, unmatched, baseline) -> str:
    source = table.get("source") or {}
    spec = table.get("delta") or {}
    lines = [
        f"# {title}: {table.get('title', table.get('id'))}",
        "",
        f"Published: `{table.get('id')}` ({source.get('paper', '?')}, {source.get('table', '?')}; status "
        f"{table.get('status', '?')}; {table.get('statistic', 'statistic not stated')}).",
        f"Ours: suite `{summary.suite}` on `{summary.dataset}`, selection rule `{summary.rule}`; STL baseline: "
        f"{summary.baseline_source}.",
        f"Δ: `{spec.get('name', 'none')}` ({spec.get('direction', '?')} is better) over "
        f"{spec.get('metrics') or 'every metric'}, computed by the table's definition on our seed means against "
        f"our STL baseline {baseline or '(none)'}; published against {((table.get('baseline') or {}).get('values'))}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body),
        "",
    ]
    if flagged:
        lines += ["Published values whose Δ does not recompute (beyond rounding):", "",
                  *(f"* {f}" for f in flagged), ""]
    if unmatched:
        lines += [f"> Note: metrics of the published table that our runs do not log: {', '.join(unmatched)}.", ""]
    for note in summary.notes:
        lines += [f"> Note: {note}", ""]
    return "\n".join(lines).rstrip() + "\n"


STEP_COSTS_FILE = REPO_ROOT / "configs" / "step_costs.yaml"


def estimate_step_seconds(suite: SuiteConfig, tasks: list, input_shape: Sequence[int], steps: int = 3,
                          batch_size: int | None = None, on_step=None) -> tuple[float, str]:
    """Seconds per EW training step of the suite's model on random input of ``input_shape`` at ``batch_size``
    (default the suite's), the mean of ``steps`` steps after one warm-up, and the device used; ``on_step`` is
    called after each step."""
    import torch

    from benchmark.runner import create_model

    accelerator = suite.train.accelerator
    device = torch.device("cuda" if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = create_model(suite, tasks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=suite.train.lr)
    x = torch.randn(batch_size or suite.train.batch_size, *input_shape, device=device)
    elapsed = 0.0
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        sum(o.float().mean() for o in model(x).values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += (time.perf_counter() - start) if i else 0.0
        if on_step is not None:
            on_step()
    return elapsed / steps, str(device)


def stored_step_cost(name: str, path: Path | None = None) -> dict[str, Any] | None:
    """The stored step-time measurement of table ``name`` (default file ``configs/step_costs.yaml``), if any."""
    import yaml

    path = STEP_COSTS_FILE if path is None else path
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("tables", {}).get(name)


def grid_tasks(suite: SuiteConfig) -> tuple[list[str], list[str]]:
    """The tasks the grid plans for (non-auxiliary ones, and all in model order), from the static dataset
    catalog when it knows them (no torch; CelebA's, named in its annotation file, as ``task01``...), else from
    the datamodule."""
    from benchmark.catalog import DATASETS, dataset_tasks

    if suite.dataset.name in DATASETS:
        known = dataset_tasks(suite.dataset.name, suite.dataset.params)
        if known is None:
            known = tuple(f"task{i:02d}" for i in range(1, DATASETS[suite.dataset.name].task_count + 1))
        return list(known), list(known)
    from benchmark.runner import create_datamodule

    tasks = create_datamodule(suite).tasks
    return [t.name for t in tasks if not t.auxiliary], [t.name for t in tasks]


def dry_run(entry: TableEntry, suite: SuiteConfig, time_steps: int = 0) -> str:
    """The grid (runs, epochs, steps) and an estimated cost, without touching the data: from the stored step
    time of ``configs/step_costs.yaml``, or, with ``time_steps`` > 0, from that many real steps timed here."""
    from benchmark.grid import plan_runs

    names, trained = grid_tasks(suite)
    runs = plan_runs(suite, names, trained)
    per_epoch = math.ceil(entry.train_size / suite.train.batch_size)
    per_run = per_epoch * suite.train.epochs
    total_steps = per_run * len(runs)
    kinds = {"methods": sum(r.stl_task is None and not r.sweep for r in runs),
             "single-task": sum(r.stl_task is not None for r in runs), "sweep": sum(r.sweep for r in runs)}
    lines = [
        f"table {entry.name}: suite {entry.suite} -> reference {entry.reference}",
        f"grid: {len(runs)} runs ({', '.join(f'{v} {k}' for k, v in kinds.items() if v)}) over seeds {suite.seeds}",
        *(f"  {r.run_id}" for r in runs),
        f"each run: {suite.train.epochs} epochs x {per_epoch} steps ({entry.train_size} training inputs / batch "
        f"{suite.train.batch_size}, from {TABLES_FILE.name}) = {per_run} steps; {total_steps} steps in all",
    ]
    caveat = ("An estimate: data loading and evaluation are not counted, and methods that need per-task gradients "
              "take up to T backward passes per step.")
    if time_steps > 0:
        step_s, device = timed_step(entry, suite, time_steps)
        how = f"{time_steps} real step(s) of {suite.model.name} timed here after one warm-up"
    else:
        stored = stored_step_cost(entry.name)
        if stored is None:
            lines.append(f"estimated cost: no stored step time for {entry.name} in {Path(STEP_COSTS_FILE).name}; "
                         "add --time-steps N to time N real steps here")
            return "\n".join(lines)
        step_s, device = float(stored["step_s"]), str(stored["device"])
        how = f"stored measurement, {stored['how']} ({STEP_COSTS_FILE.name})"
    lines.append(f"estimated cost: about {total_steps * step_s / 3600:.1f} h on {device} ({step_s:.3f} s per EW "
                 f"step of {suite.model.name} on random {'x'.join(map(str, entry.input_shape))} input; {how}). "
                 + caveat)
    return "\n".join(lines)


def timed_step(entry: TableEntry, suite: SuiteConfig, steps: int) -> tuple[float, str]:
    """Seconds per real EW step of the entry's model at full size (``steps`` after a warm-up), with progress."""
    from rich.progress import Progress

    from benchmark.runner import create_datamodule

    tasks = create_datamodule(suite).tasks
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"timing {steps} step(s) of {suite.model.name} (+1 warm-up)", total=steps + 1)
        return estimate_step_seconds(suite, tasks, entry.input_shape, steps, on_step=lambda: progress.advance(bar))


class DataMissing(FileNotFoundError):
    """The protocol's data is not there; the message says where to get it and the layout expected."""


def run_table(entry: TableEntry, suite: SuiteConfig, out: str | Path | None = None) -> tuple[Comparison, Path]:
    """Train the protocol suite (runs with records are reused), write its leaderboard and the comparison with the
    published table; returns the comparison and where it was written."""
    from benchmark.records import load_records, write_text_atomic
    from benchmark.report.markdown import write_leaderboard
    from benchmark.report.summary import summarize
    from benchmark.runner import run_suite
    from benchmark.scoring import load_reference_tables

    table = load_reference_tables()[entry.reference]
    try:
        run_suite(suite)
    except FileNotFoundError as exc:
        raise DataMissing(f"table {entry.name!r}: the data of dataset {suite.dataset.name!r} (suite {entry.suite}) "
                          f"is not there:\n{exc}") from exc
    runs_dir = Path(suite.output_dir) / suite.name
    write_leaderboard(runs_dir, Path(suite.leaderboard), suite.selection)
    records, _ = load_records(runs_dir)
    summary = next(s for s in summarize(records, suite.selection) if s.suite == suite.name)
    comparison = compare(table, summary, entry.aliases, f"`mtobench table {entry.name}`", entry.metrics)
    path = Path(out) if out is not None else runs_dir / f"table_{entry.name}.md"
    write_text_atomic(path, comparison.markdown)
    return comparison, path
