"""``leaderboard.md``: the summaries of ``report/summary.py`` as Markdown tables (columns from
``report/columns.py``), and the write of a folder of records to it, with the figures of ``report/figures.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.config import fingerprinted
from benchmark.records import load_records, write_text_atomic
from benchmark.report.baselines import MEASURED
from benchmark.report.columns import (
    ABSENT,
    Column,
    leaderboard_columns,
    paired_columns,
    pm,
    stl_columns,
    sweep_columns,
)
from benchmark.report.convergence import convergence_line
from benchmark.report.figures import figures_markdown, write_figures
from benchmark.report.summary import DIAGNOSTICS, DatasetSummary, MethodRow, summarize
from benchmark.scoring import LAST_K

PAIRED_LEGEND = (
    "Paired by seed (the headline; rows in this order): the same seed gives every method the same "
    "initialisation and data order, so each row's Δm% is compared with EW's Δm% of the same seed. Δm − EW per "
    "seed: that difference (negative: better than EW); mean [95% CI]: its mean over the paired seeds and the "
    "Student-t interval of that mean (n − 1 degrees of freedom); separable: the interval excludes 0; seeds to "
    "separate 2 points: the seeds whose interval would be narrower than ±2 points at the spread of these "
    "differences (the power to separate a 2-point Δm gap; benchmark.scoring.seeds_to_separate). Pairs are "
    "formed on the seeds both rows have; a seed only one side has is named in the seeds cell, not averaged. A row "
    "trained on a modified model (e.g. per-task BN) is also paired with its control, EW on that same model, so "
    "that its gain can be credited to the method rather than the model. Mean rank has no paired column: a rank "
    "is relative to the set of rows compared (adding or dropping a method changes every rank) and says which "
    "row is ahead, not by how much, so a t-interval of per-seed rank differences over a few seeds is no test; "
    "the paired Δm is the comparison to read."
)
LEGEND = (
    "Unpaired (each row on its own): metrics and Δm% (vs the STL baseline, per seed): mean ± sample std over "
    "seeds; 95% CI: Student-t half-width of the Δm mean, which also carries the noise all methods share on a "
    "seed. Δp% (LibMTL's task-level score, higher is better): the signed relative "
    "improvement averaged within each task, then over tasks, per seed. MR: mean over metrics of the rank among "
    "the rows above, on seed means (ties averaged, NaN last). Step time and peak memory: ratio of seed means to "
    "EW's; peak memory is compared only for CUDA runs (a CPU run records the process-wide max RSS, which is not "
    "per run). A single-seed row shows its value without ± (no std exists). † marks a row with fewer seeds than the "
    "table's most-seeded row: it is listed after the full rows and gets no MR (MR ranks only the full rows). The Δm "
    "CI also counts the measured STL baseline's seed variance (docs/protocols.md §M.7)."
)

PLUGIN_LEGEND = ("(plugin pkg version): a method from an installed plugin package (its `mtobench.methods` entry "
                 "point), not a built-in; the version is the package's at training time (the record's `versions`).")


def _rule_text(rule: str, val_criterion: str) -> str:
    if rule == "last":
        return "`last`: test metrics of the last epoch."
    if rule == "last10":
        return f"`last10`: test metrics averaged over the last {LAST_K} epochs of each run."
    return f"`best-val`: test metrics at the epoch chosen on validation ({val_criterion})."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def column_table(columns: Sequence[Column], rows: Sequence[Any]) -> list[str]:
    """A Markdown table with one line per row, one cell per column."""
    return _table([c.header for c in columns], [[c.cell(row) for c in columns] for row in rows])


def _diagnostics_markdown(rows: Sequence[MethodRow]) -> list[str]:
    shown = [r for r in rows if r.diagnostics]
    if not shown:
        return []

    def base(key: str) -> str:
        return next(b for b in DIAGNOSTICS if key == b or (b.endswith("/") and key.startswith(b)))

    def head(key: str) -> str:
        return DIAGNOSTICS[base(key)][0] + (f" {key[len(base(key)):]}" if base(key).endswith("/") else "")

    found = list(dict.fromkeys(k for r in rows for k in r.diagnostics))
    keys = sorted(found, key=lambda k: (list(DIAGNOSTICS).index(base(k)), found.index(k)))
    columns = [Column("method", lambda row: row.label),
               *(Column(head(k), lambda row, k=k: row.diagnostics.get(k, ABSENT),
                        lambda v: v if v is ABSENT else pm(2)(v)) for k in keys)]
    legend = ("Method diagnostics (mean ± std over seeds): Phase-1 steps and projections fired are fractions over "
              "the run (projections: of the owner/other-task pairs tested in Phase-2 steps); priority is the share of "
              "paired conv channels whose top-priority task is that task, averaged over the last epoch.")
    return ["", *column_table(columns, shown), "", legend]


def _sweep_markdown(summary: DatasetSummary) -> list[str]:
    """The linear-scalarization sweep: its points, its front, and which methods the front dominates."""
    if not summary.sweep_rows:
        return []
    lines = ["", f"Linear-scalarization sweep (fixed loss weights, Xin et al. 2022): {len(summary.sweep_rows)} "
             "weight vectors on the simplex grid, summing to T (EW's scale).", ""]
    lines += column_table(sweep_columns(summary.metrics, list(summary.front)), summary.sweep_rows)
    if summary.front:
        tasks = list(next(iter(summary.front.values())))
        lines += ["", "Methods against the front (per-task score: mean % improvement over STL of the task's metrics "
                  "in Δm, higher is better; dominated: some front point is at least as good on every task and "
                  "better on one):", ""]
        body = [[r.label, "yes: " + ", ".join(summary.dominated_by[r.label]) if summary.dominated_by[r.label]
                 else "no"] for r in summary.rows]
        lines += _table(["method", "dominated by the sweep's front"], body)
        lines += [""] + _table(["front point", *tasks],
                               [[label, *(f"{p[t]:.2f}" for t in tasks)] for label, p in summary.front.items()])
    return lines


def _seeds_line(rows: Sequence[MethodRow]) -> str:
    counts = {r.label: len(r.seeds) for r in rows}
    if not counts:
        return "Seeds per method: no MTL runs."
    if len(set(counts.values())) == 1:
        return f"Seeds per method: {next(iter(counts.values()))} ({', '.join(sorted(counts))})."
    return "Seeds per method: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."


def _stl_line(summary: DatasetSummary) -> str:
    if summary.baseline_source != MEASURED:
        scored = summary.scoring.metrics if summary.scoring else list(summary.baseline)
        line = (f"STL baseline: {summary.baseline_source}; Δm over the {sum(k in summary.baseline for k in scored)} "
                "scored metrics it gives")
        if summary.stl_rows:
            line += "; this suite's own STL runs are listed below for comparison"
        return line + "."
    runs = sum(len(r.seeds) for r in summary.stl_rows)
    per_task = ", ".join(f"{r.task}: {len(r.seeds)}" for r in summary.stl_rows)
    line = f"STL baseline: measured by this suite: {runs} single-task runs, mean over seeds"
    line += f" ({per_task})" if per_task else ""
    if summary.missing_stl_tasks:
        line += f"; missing for task(s) {', '.join(summary.missing_stl_tasks)}"
    return line + "."


def _scoring_line(summary: DatasetSummary) -> str:
    """The metric set Δm, Δp and MR use, where it was declared, and Δm's sign."""
    spec = summary.scoring
    if spec is None:
        return "Scored metrics: every non-auxiliary metric."
    sign = ("higher is better (CSO / Vandenhende sign)" if spec.higher_is_better
            else "lower is better (Maninis / Nash-MTL sign)")
    return (f"Scored metrics (Δm, Δp, MR; {len(spec.metrics)}, from {spec.source}): "
            f"{', '.join(f'`{k}`' for k in spec.metrics)}; Δm: {sign}.")


def _higher(summary: DatasetSummary) -> bool:
    return summary.scoring.higher_is_better if summary.scoring else False


def _paired_markdown(summary: DatasetSummary) -> list[str]:
    """The paired table (``report/paired.py``), its legend and its warnings, before the unpaired table."""
    lines = []
    if any(r.vs_ew is not None for r in summary.rows):
        table = column_table(paired_columns(summary.rows, _higher(summary)), summary.rows)
        lines += ["Paired by seed vs EW:", "", *table, "", PAIRED_LEGEND, ""]
    lines += [line for warning in summary.paired_warnings for line in (f"> **Warning:** {warning}", "")]
    return lines


def _summary_markdown(summary: DatasetSummary) -> list[str]:
    lines = [
        f"## {summary.dataset} — suite `{summary.suite}`",
        "",
        f"Selection rule: {_rule_text(summary.rule, summary.criterion)}",
        "",
        _seeds_line(summary.rows),
        "",
        _stl_line(summary),
        "",
        _scoring_line(summary),
        "",
        convergence_line(summary.convergence),
        "",
    ]
    lines += _paired_markdown(summary)
    if summary.rows:
        lines += column_table(leaderboard_columns(summary.metrics, _higher(summary)), summary.rows)
        lines += ["", LEGEND]
        if any(r.plugin for r in summary.rows):
            lines += ["", PLUGIN_LEGEND]
        lines += _diagnostics_markdown(summary.rows)
        lines += _sweep_markdown(summary)
    else:
        lines.append("No MTL runs.")
    lines.append("")
    for note in summary.notes:
        lines += [f"> Note: {note}", ""]
    lines += _not_scored_markdown(summary)
    if summary.stl_rows:
        lines += ["Single-task (STL) runs:", ""]
        lines += column_table(stl_columns(summary.metrics), summary.stl_rows) + [""]
    return lines


def _not_scored_markdown(summary: DatasetSummary) -> list[str]:
    """One line per run left out of Δm, CIs and ranks, with its status and why."""
    return [line for n in summary.not_scored
            for line in (f"> Not scored: `{n.run_id}` ({n.status}): {n.reason}", "")]


def build_leaderboard(
    records: Sequence[Mapping[str, Any]], rule: str = "last", notes: Sequence[str] = (),
    summaries: Sequence[DatasetSummary] | None = None,
) -> str:
    """The Markdown leaderboard of ``records`` (finished runs), selecting epochs by ``rule``; ``summaries``: those
    of ``records`` already computed (else computed here)."""
    summaries = summarize(records, rule) if summaries is None else summaries
    lines = ["# mtobench leaderboard", "", _provenance(records), ""]
    lines += [_config_line(records), ""] if any(r.get("config") for r in records) else []
    lines += [line for note in notes for line in (f"> Note: {note}", "")]
    if not summaries:
        lines += ["No finished runs.", ""]
    for summary in summaries:
        lines += _summary_markdown(summary)
    return "\n".join(lines).rstrip() + "\n"


def _provenance(records: Sequence[Mapping[str, Any]]) -> str:
    """One line naming what the table was built from: run count, git commits, torch builds and devices."""

    def distinct(values) -> str:
        return ", ".join(f"`{v}`" for v in sorted({str(v) for v in values})) or "none"

    commits = distinct(f"{str(r.get('git_commit'))[:10]}{' (dirty)' if r.get('git_dirty') else ''}" for r in records)
    torch_builds = distinct((r.get("versions") or {}).get("torch_build") for r in records)
    devices = distinct(r.get("device") for r in records)
    return f"Built from {len(records)} run records; git commit {commits}; torch {torch_builds}; device {devices}."


CONFIG_LINE = "Suite configs (sha256 of the records' `config`, first 16 hex digits):"


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short hash of a suite's resolved config (``SuiteConfig.to_dict()``, as a record's ``config`` keeps it)."""
    payload = json.dumps(fingerprinted(dict(config)), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _config_line(records: Sequence[Mapping[str, Any]]) -> str:
    """:data:`CONFIG_LINE` then, per suite, the fingerprints of its records' configs: one, unless records of an
    older config were reused. :func:`config_fingerprints` reads it back."""
    found: dict[str, set[str]] = {}
    for r in records:
        if r.get("config"):
            found.setdefault(str(r["suite"]), set()).add(config_fingerprint(r["config"]))
    parts = [f"suite `{suite}`: " + ", ".join(f"`{f}`" for f in sorted(prints))
             for suite, prints in sorted(found.items())]
    return f"{CONFIG_LINE} {'; '.join(parts)}."


def config_fingerprints(leaderboard: str) -> dict[str, list[str]]:
    """Per suite, the config fingerprints a leaderboard's header names (empty if it has no such line)."""
    line = next((ln for ln in leaderboard.splitlines() if ln.startswith(CONFIG_LINE)), "")
    return {suite: re.findall(r"`([0-9a-f]+)`", prints)
            for suite, prints in re.findall(r"suite `([^`]+)`: ((?:`[0-9a-f]+`(?:, )?)+)", line)}


def write_leaderboard(
    records_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    rule: str = "last",
    plot: bool = False,
) -> Path:
    """Write the leaderboard of the records below ``records_dir`` to ``out_path``, summarising them once; with
    ``plot``, also the figures of ``report/figures.py`` beside it, linked from a ``Figures`` section."""
    records, notes = load_records(records_dir, unscored=True)
    out = Path(out_path)
    summaries = summarize(records, rule)
    left_out = {n.run_id for s in summaries for n in s.not_scored}
    scored = [r for r in records if r["run_id"] not in left_out]
    text = build_leaderboard(scored, rule, notes, summaries)
    if plot:
        text += figures_markdown(write_figures(scored, summaries, out, rule), out)
    write_text_atomic(out, text)
    return out
