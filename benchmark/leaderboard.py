"""Markdown leaderboards built from run records (the JSON objects the runner writes, one per run).

Records are grouped by ``(suite, dataset)``. Within a group, MTL runs are grouped by ``method_label`` (else
``method``; split further by ``method_hparams`` if those differ), each row aggregating its seeds. The STL
baseline of a metric is the mean, over the suite's single-task runs of that metric's task, of the selected
metric values; Δm is computed per seed against it. Nothing is skipped silently: unfinished runs, missing STL
tasks and short logs each produce a note in the output. Metrics of auxiliary tasks (the record's ``tasks`` entry
has ``auxiliary: true``, e.g. CSO's edges) are shown as columns but enter neither Δm, nor MR, nor the STL check.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.baselines import MEASURED, match_metrics, published_baseline
from benchmark.records import SCHEMA_VERSION, write_text_atomic
from benchmark.scoring import (
    LAST_K,
    SELECTION_RULES,
    SeedStats,
    delta_m,
    delta_p,
    mean_rank,
    seed_mean,
    seed_stats,
    select,
    select_with_info,
)
from benchmark.sweep import dominates, task_scores
from benchmark.sweep import front as sweep_front

EW_METHOD = "ew"
DIAGNOSTICS = {
    "phase1": ("Phase-1 steps", "run"),
    "projection_rate": ("projections fired", "run"),
    "priority/": ("priority", "last_epoch"),
}
"""Method statistics shown per row (``run``: mean over the run's steps; ``last_epoch``: mean over the last epoch).
A key ending in ``/`` stands for one column per task (e.g. CSO's share of channels each task owns)."""
RECORD_KINDS = ("mtl", "stl")
UNIT_DECIMALS = {"percent": 2, "degrees": 2, "metres": 4, "ratio": 4, "inverse_depth": 4, "fraction": 4}
DEFAULT_DECIMALS = 4
ARROWS = {"higher": "↑", "lower": "↓"}
LEGEND = (
    "Metrics and Δm% (vs the STL baseline, per seed): mean ± sample std over seeds; 95% CI: Student-t "
    "half-width of the Δm mean. Δp% (LibMTL's task-level score, higher is better): the signed relative "
    "improvement averaged within each task, then over tasks, per seed. MR: mean over metrics of the rank among "
    "the rows above, on seed means (ties averaged, NaN last). Step time and peak memory: ratio of seed means to "
    "EW's; peak memory is compared only for CUDA runs (a CPU run records the process-wide max RSS, which is not "
    "per run)."
)


@dataclass(frozen=True)
class MetricSpec:
    key: str
    direction: str
    unit: str | None
    task: str
    auxiliary: bool = False


@dataclass(frozen=True)
class MethodRow:
    """One MTL row: a method (variant) aggregated over its seeds."""

    label: str
    method: str
    seeds: tuple[int, ...]
    run_ids: tuple[str, ...]
    metrics: dict[str, SeedStats]
    delta_m: SeedStats | None
    mean_rank: float | None
    step_time_ratio: float | None
    memory_ratio: float | None
    diagnostics: dict[str, SeedStats] = field(default_factory=dict)
    delta_p: SeedStats | None = None


@dataclass(frozen=True)
class StlRow:
    task: str
    seeds: tuple[int, ...]
    metrics: dict[str, SeedStats]


@dataclass
class DatasetSummary:
    """Everything a leaderboard shows for one ``(suite, dataset)`` group."""

    suite: str
    dataset: str
    rule: str
    criterion: str
    metrics: list[MetricSpec]
    rows: list[MethodRow]
    stl_rows: list[StlRow]
    baseline: dict[str, float]
    missing_stl_tasks: list[str]
    notes: list[str] = field(default_factory=list)
    baseline_source: str = "measured"
    """``measured`` or the published baseline used (id, source and file)."""
    sweep_rows: list[MethodRow] = field(default_factory=list)
    """The fixed-weight linear-scalarization runs (suite ``sweep``), one row per weight vector."""
    front: dict[str, dict[str, float]] = field(default_factory=dict)
    """The non-dominated sweep rows: label -> per-task score (% improvement over STL, higher is better)."""
    dominated_by: dict[str, list[str]] = field(default_factory=dict)
    """Per method row: the front points that dominate it (empty: not dominated)."""


def _metric_task(key: str, spec: Mapping[str, Any]) -> str:
    return str(spec.get("task") or key.split("/", 1)[0])


def _check_record(record: Mapping[str, Any]) -> None:
    run_id = record.get("run_id", "<no run_id>")
    for key in ("run_id", "suite", "dataset", "method", "kind", "seed", "metrics", "epochs"):
        if key not in record:
            raise ValueError(f"run {run_id}: the record has no {key!r}")
    if record["kind"] not in RECORD_KINDS:
        raise ValueError(f"run {run_id}: kind {record['kind']!r} is not one of {RECORD_KINDS}")
    if record["kind"] == "stl" and not record.get("stl_task"):
        raise ValueError(f"run {run_id}: an STL record needs 'stl_task'")


def _metric_specs(records: Sequence[Mapping[str, Any]]) -> list[MetricSpec]:
    """The metrics of the MTL records (else of all records), with directions checked for consistency."""
    specs: dict[str, MetricSpec] = {}
    owner: dict[str, str] = {}
    mtl = [r for r in records if r["kind"] == "mtl"]
    auxiliary = {t["name"] for r in records for t in r.get("tasks") or [] if t.get("auxiliary")}
    for record in mtl or records:
        for key, spec in record["metrics"].items():
            task = _metric_task(key, spec)
            new = MetricSpec(key, spec["direction"], spec.get("unit"), task, task in auxiliary)
            if key in specs and specs[key].direction != new.direction:
                raise ValueError(
                    f"metric {key!r} is {specs[key].direction!r} in run {owner[key]} "
                    f"but {new.direction!r} in run {record['run_id']}"
                )
            specs.setdefault(key, new)
            owner.setdefault(key, record["run_id"])
    for record in records:
        for key, spec in record["metrics"].items():
            if key in specs and spec["direction"] != specs[key].direction:
                raise ValueError(
                    f"metric {key!r} has direction {spec['direction']!r} in run {record['run_id']}"
                )
    return list(specs.values())


def _label(record: Mapping[str, Any]) -> str:
    return str(record.get("method_label") or record["method"])


def _variant_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """Runs of one label differ as variants if their hyper-parameters or model overrides (e.g. task_bn) differ."""
    overrides = (record.get("model") or {}).get("overrides") or {}
    hparams = {**(record.get("method_hparams") or {}), **{f"model.{k}": v for k, v in overrides.items()}}
    if record.get("update_every", 1) != 1:
        hparams["update_every"] = record["update_every"]
    return _label(record), json.dumps(hparams, sort_keys=True, default=str)


def _variant_label(label: str, hparams_json: str, ambiguous: bool) -> str:
    if not ambiguous:
        return label
    hparams = json.loads(hparams_json)
    return f"{label} ({', '.join(f'{k}={v}' for k, v in hparams.items())})" if hparams else label


def _ew_records(mtl: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The EW runs timing ratios refer to: those labelled ``ew`` if any, else every run of method ``ew``."""
    ew = [r for r in mtl if r["method"] == EW_METHOD]
    plain = [r for r in ew if _label(r) == EW_METHOD]
    return plain or ew


def _timing_mean(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [(r.get("timing") or {}).get(key) for r in records]
    if not values or any(v is None for v in values):
        return None
    mean = seed_mean([float(v) for v in values])
    return None if math.isnan(mean) else mean


def _memory_mean(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Peak memory is comparable only as per-run CUDA peaks; a CPU record holds the process-wide max RSS."""
    if any((r.get("timing") or {}).get("peak_memory_kind") != "cuda_allocated" for r in records):
        return None
    return _timing_mean(records, "peak_memory_bytes")


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _check_seeds(label: str, records: Sequence[Mapping[str, Any]]) -> None:
    seen: dict[Any, str] = {}
    for record in records:
        if record["seed"] in seen:
            raise ValueError(
                f"{label}: seed {record['seed']} appears in runs {seen[record['seed']]} and "
                f"{record['run_id']}; a seed must not be counted twice"
            )
        seen[record["seed"]] = record["run_id"]


def _stl_baseline(
    stl: Sequence[Mapping[str, Any]], specs: Sequence[MetricSpec], picks: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, float], list[str], list[str]]:
    """Baseline per metric (mean over the STL runs of its task), the tasks without STL runs, and notes."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in stl:
        by_task[record["stl_task"]].append(record)
    baseline: dict[str, float] = {}
    missing_tasks: list[str] = []
    notes: list[str] = []
    for spec in specs:
        runs = by_task.get(spec.task, [])
        if not runs:
            if spec.task not in missing_tasks:
                missing_tasks.append(spec.task)
            continue
        lacking = [r["run_id"] for r in runs if spec.key not in picks[r["run_id"]]]
        if lacking:
            notes.append(f"STL runs {', '.join(lacking)} lack metric `{spec.key}`; it has no baseline.")
            continue
        value = seed_mean([picks[r["run_id"]][spec.key] for r in runs])
        if value == 0 or math.isnan(value):
            notes.append(f"The STL baseline of `{spec.key}` is {value}: its relative change is undefined, Δm is n/a.")
            continue
        baseline[spec.key] = value
    return baseline, missing_tasks, notes


def _val_baseline(stl: Sequence[Mapping[str, Any]], specs: Sequence[MetricSpec]) -> dict[str, float] | None:
    """STL val metrics at each STL run's best-val epoch (lowest val loss), averaged; None if incomplete."""
    by_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for record in stl:
        by_task[record["stl_task"]].append(select(record, "best-val", "val"))
    baseline = {}
    for spec in specs:
        runs = by_task.get(spec.task, [])
        if not runs or any(spec.key not in r for r in runs):
            return None
        baseline[spec.key] = seed_mean([r[spec.key] for r in runs])
    return baseline


def _rule_text(rule: str, val_criterion: str) -> str:
    if rule == "last":
        return "`last`: test metrics of the last epoch."
    if rule == "last10":
        return f"`last10`: test metrics averaged over the last {LAST_K} epochs of each run."
    return f"`best-val`: test metrics at the epoch chosen on validation ({val_criterion})."


def summarize(records: Sequence[Mapping[str, Any]], rule: str = "last") -> list[DatasetSummary]:
    """Aggregate finished run records into one ``DatasetSummary`` per ``(suite, dataset)``."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid rules: {', '.join(SELECTION_RULES)}")
    seen: dict[str, Mapping[str, Any]] = {}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    skipped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        _check_record(record)
        group = (str(record["suite"]), str(record["dataset"]))
        if record.get("status", "finished") != "finished":
            skipped[group].append(f"skipped unfinished run {record['run_id']} (status {record['status']!r}).")
            continue
        if record["run_id"] in seen:
            raise ValueError(f"run {record['run_id']} appears twice; it must not be counted twice")
        seen[record["run_id"]] = record
        groups[group].append(record)
    return [
        _summarize_group(suite, dataset, groups[(suite, dataset)], rule, skipped[(suite, dataset)])
        for suite, dataset in sorted(set(groups) | set(skipped))
    ]


def _short_log_note(rule: str, short: Mapping[str, int], total: int) -> str:
    listed = ", ".join(f"{run} ({n})" for run, n in list(short.items())[:5])
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    return (
        f"`{rule}`: {len(short)} of {total} runs have fewer than {LAST_K} epochs (as few as "
        f"{min(short.values())}); all their epochs were averaged: {listed}{more}."
    )


def _val_criterion(rule: str, val_baseline: Mapping[str, float] | None) -> str:
    if rule != "best-val":
        return rule
    if val_baseline is not None:
        return "lowest Δm of the val metrics against the STL val baseline; STL runs: lowest val loss"
    return "lowest summed val loss, since the STL val baseline is incomplete"


def _pick(
    records: Sequence[Mapping[str, Any]], rule: str, val_baseline: Mapping[str, float] | None
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Selected test metrics per run id, and a note when ``last10`` had fewer than 10 epochs to average."""
    picks: dict[str, dict[str, float]] = {}
    short: dict[str, int] = {}
    for record in records:
        baseline_for = val_baseline if record["kind"] == "mtl" else None
        picks[record["run_id"]], info = select_with_info(record, rule, "test", baseline_for)
        if info.note:
            short[record["run_id"]] = len(info.epochs)
    return picks, [_short_log_note(rule, short, len(records))] if short else []


def _method_rows(
    mtl: Sequence[Mapping[str, Any]],
    specs: Sequence[MetricSpec],
    picks: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, float] | None,
    delta_keys: Sequence[str] | None = None,
) -> list[MethodRow]:
    """One row per method variant, sorted by Δm (n/a and NaN last); ``baseline`` None means no Δm. Δm is over
    ``delta_keys`` (default: every metric)."""
    variants: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in mtl:
        absent = [s.key for s in specs if s.key not in picks[record["run_id"]]]
        if absent:
            raise ValueError(f"run {record['run_id']}: no test value for metrics {absent}")
        variants[_variant_key(record)].append(record)
    per_label: dict[str, int] = defaultdict(int)
    for label, _ in variants:
        per_label[label] += 1
    ew_records = _ew_records(mtl)
    ew_step = _timing_mean(ew_records, "step_time_mean_s") if ew_records else None
    ew_mem = _memory_mean(ew_records) if ew_records else None
    directions = {s.key: s.direction for s in specs if not s.auxiliary}
    delta_directions = {k: directions[k] for k in (delta_keys if delta_keys is not None else directions)}
    groups: dict[str, list[str]] = defaultdict(list)
    for spec in specs:
        if spec.key in delta_directions:
            groups[spec.task].append(spec.key)
    rows = []
    for (base_label, hparams), runs in variants.items():
        label = _variant_label(base_label, hparams, per_label[base_label] > 1)
        _check_seeds(label, runs)
        runs = sorted(runs, key=lambda r: r["seed"])
        values = [picks[r["run_id"]] for r in runs]
        dm = None if baseline is None else seed_stats([delta_m(v, baseline, delta_directions) for v in values])
        dp = None if baseline is None else seed_stats([delta_p(v, baseline, delta_directions, groups) for v in values])
        rows.append(
            MethodRow(
                label=label,
                method=runs[0]["method"],
                seeds=tuple(r["seed"] for r in runs),
                run_ids=tuple(r["run_id"] for r in runs),
                metrics={s.key: seed_stats([v[s.key] for v in values]) for s in specs},
                delta_m=dm,
                delta_p=dp,
                mean_rank=None,
                step_time_ratio=_ratio(_timing_mean(runs, "step_time_mean_s"), ew_step),
                memory_ratio=_ratio(_memory_mean(runs), ew_mem),
                diagnostics=_diagnostics(runs),
            )
        )
    if rows and directions:
        ranks = mean_rank({r.label: {k: s.mean for k, s in r.metrics.items()} for r in rows}, directions)
        rows = [_with_rank(r, ranks[r.label]) for r in rows]
    return sorted(rows, key=_row_order)


def _diagnostics(runs: Sequence[Mapping[str, Any]]) -> dict[str, SeedStats]:
    """The :data:`DIAGNOSTICS` statistics every run of a row reported, as seed statistics."""
    tasks = [t["name"] for t in runs[0].get("tasks", [])]
    out = {}
    for key, (_, scope) in DIAGNOSTICS.items():
        for stat in [key + t for t in tasks] if key.endswith("/") else [key]:
            if scope == "run":
                values = [((r.get("method_stats") or {}).get(stat) or {}).get("mean") for r in runs]
            else:
                values = [((r.get("epochs") or [{}])[-1].get("method_stats") or {}).get(stat) for r in runs]
            if all(v is not None for v in values):
                out[stat] = seed_stats([float(v) for v in values])
    return out


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
    body = [[r.label, *(_pm(r.diagnostics.get(k), 2) if k in r.diagnostics else "—" for k in keys)] for r in shown]
    legend = ("Method diagnostics (mean ± std over seeds): Phase-1 steps and projections fired are fractions over "
              "the run (projections: of the owner/other-task pairs tested in Phase-2 steps); priority is the share of "
              "paired conv channels whose top-priority task is that task, averaged over the last epoch.")
    return ["", *_table(["method", *map(head, keys)], body), "", legend]


def _sweep_markdown(summary: DatasetSummary) -> list[str]:
    """The linear-scalarization sweep: its points, its front, and which methods the front dominates."""
    if not summary.sweep_rows:
        return []
    lines = ["", f"Linear-scalarization sweep (fixed loss weights, Xin et al. 2022): {len(summary.sweep_rows)} "
             "weight vectors on the simplex grid, summing to T (EW's scale).", ""]
    heads = [f"{s.key} {ARROWS.get(s.direction, '')}".rstrip() for s in summary.metrics]
    body = [[r.label, str(len(r.seeds)), *(_pm(r.metrics[s.key], _decimals(s.unit)) for s in summary.metrics),
             _pm(r.delta_m, 2), "yes" if r.label in summary.front else "no"] for r in summary.sweep_rows]
    lines += _table(["weights", "seeds", *heads, "Δm% ↓", "on the front"], body)
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


def _stl_rows(
    stl: Sequence[Mapping[str, Any]], specs: Sequence[MetricSpec], picks: Mapping[str, Mapping[str, float]]
) -> list[StlRow]:
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in stl:
        by_task[record["stl_task"]].append(record)
    rows = []
    for task in sorted(by_task):
        runs = sorted(by_task[task], key=lambda r: r["seed"])
        _check_seeds(f"STL {task}", runs)
        keys = [s.key for s in specs if s.task == task and all(s.key in picks[r["run_id"]] for r in runs)]
        metrics = {k: seed_stats([picks[r["run_id"]][k] for r in runs]) for k in keys}
        rows.append(StlRow(task, tuple(r["seed"] for r in runs), metrics))
    return rows


def _summarize_group(
    suite: str, dataset: str, records: Sequence[Mapping[str, Any]], rule: str, skipped: Sequence[str]
) -> DatasetSummary:
    specs = _metric_specs(records)
    scored = [s for s in specs if not s.auxiliary]
    mtl = [r for r in records if r["kind"] == "mtl" and not r.get("sweep")]
    sweep = [r for r in records if r["kind"] == "mtl" and r.get("sweep")]
    stl = [r for r in records if r["kind"] == "stl"]
    val_baseline = _val_baseline(stl, scored) if rule == "best-val" else None
    picks, notes = _pick(records, rule, val_baseline)
    choice = _stl_choice(records)
    if choice == MEASURED:
        baseline, missing_tasks, stl_notes = _stl_baseline(stl, scored, picks)
        source = MEASURED
        if missing_tasks:
            stl_notes.append(f"No STL run for task(s) {', '.join(missing_tasks)}: Δm is n/a.")
        delta_keys = [s.key for s in scored] if scored and all(s.key in baseline for s in scored) else None
    else:
        published = published_baseline(choice)
        baseline, unmatched = match_metrics(published.values, [s.key for s in scored])
        source = f"published `{published.id}` ({published.source}; {Path(published.path).name})"
        missing_tasks = sorted({s.task for s in scored if not any(k.startswith(f"{s.task}/") for k in baseline)})
        stl_notes = [f"Metrics without a published baseline value, left out of Δm: {', '.join(unmatched)}."] \
            if unmatched else []
        delta_keys = [s.key for s in scored if s.key in baseline] or None
    notes = [*skipped, *notes, *stl_notes]
    if rule == "best-val" and any(r.get("dataset_info", {}).get("val_is_test") for r in records):
        notes.append("**Warning:** the validation split of these runs is the test split (dataset `val_size: 0`), "
                     "so `best-val` selects on test, as LibMTL does; the numbers are optimistic.")
    rows = _method_rows(mtl, specs, picks, baseline if delta_keys else None, delta_keys)
    sweep_rows = _method_rows(sweep, specs, picks, baseline if delta_keys else None, delta_keys) if sweep else []
    front, dominated = _judge(rows, sweep_rows, specs, baseline, delta_keys, notes)
    return DatasetSummary(
        suite,
        dataset,
        rule,
        _val_criterion(rule, val_baseline),
        specs,
        rows,
        _stl_rows(stl, specs, picks),
        baseline,
        missing_tasks,
        notes,
        source,
        sweep_rows,
        front,
        dominated,
    )


def _stl_choice(records: Sequence[Mapping[str, Any]]) -> str:
    """The suite's ``stl_baseline`` (``measured`` for records written before the field existed)."""
    choices = {str((r.get("config") or {}).get("stl_baseline") or MEASURED) for r in records}
    if len(choices) > 1:
        raise ValueError(f"the records of one suite name different stl_baseline values {sorted(choices)}")
    return choices.pop() if choices else MEASURED


def _judge(
    rows: Sequence[MethodRow], sweep_rows: Sequence[MethodRow], specs: Sequence[MetricSpec],
    baseline: Mapping[str, float], delta_keys: Sequence[str] | None, notes: list[str],
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """The sweep's front and, per method row, the front points dominating it, on per-task scores vs the STL
    baseline (Xin et al. 2022)."""
    if not sweep_rows:
        return {}, {}
    if not delta_keys:
        notes.append("The sweep's front needs a complete STL baseline; it is not drawn.")
        return {}, {}
    directions = {s.key: s.direction for s in specs if s.key in delta_keys}
    task_of = {s.key: s.task for s in specs}

    def scores(row: MethodRow) -> dict[str, float]:
        return task_scores({k: row.metrics[k].mean for k in directions}, baseline, directions, task_of)

    points = {r.label: scores(r) for r in sweep_rows}
    front = {label: points[label] for label in sweep_front(points)}
    dominated = {r.label: [f for f, p in front.items() if dominates(p, scores(r))] for r in rows}
    return front, dominated


def _with_rank(row: MethodRow, rank: float) -> MethodRow:
    return MethodRow(**{**row.__dict__, "mean_rank": rank})


def _row_order(row: MethodRow) -> tuple[bool, float, str]:
    value = row.delta_m.mean if row.delta_m is not None else math.nan
    return (math.isnan(value), 0.0 if math.isnan(value) else value, row.label)


def _decimals(unit: str | None) -> int:
    return UNIT_DECIMALS.get(unit or "", DEFAULT_DECIMALS)


def _pm(stats: SeedStats | None, decimals: int) -> str:
    if stats is None:
        return "n/a"
    return f"{stats.mean:.{decimals}f} ± {stats.std:.{decimals}f}"


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _seeds_line(rows: Sequence[MethodRow]) -> str:
    counts = {r.label: len(r.seeds) for r in rows}
    if not counts:
        return "Seeds per method: no MTL runs."
    if len(set(counts.values())) == 1:
        return f"Seeds per method: {next(iter(counts.values()))} ({', '.join(sorted(counts))})."
    return "Seeds per method: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."


def _stl_line(summary: DatasetSummary) -> str:
    if summary.baseline_source != MEASURED:
        line = f"STL baseline: {summary.baseline_source}; Δm over the {len(summary.baseline)} metrics it gives"
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


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def _summary_markdown(summary: DatasetSummary) -> list[str]:
    metric_heads = [f"{s.key} {ARROWS.get(s.direction, '')}{' (aux)' if s.auxiliary else ''}".rstrip()
                    for s in summary.metrics]
    lines = [
        f"## {summary.dataset} — suite `{summary.suite}`",
        "",
        f"Selection rule: {_rule_text(summary.rule, summary.criterion)}",
        "",
        _seeds_line(summary.rows),
        "",
        _stl_line(summary),
        "",
    ]
    if summary.rows:
        header = [
            "method",
            "seeds",
            *metric_heads,
            "Δm% ↓",
            "Δm% 95% CI",
            "Δp% ↑",
            "MR ↓",
            "step time ×EW",
            "peak mem ×EW",
        ]
        body = []
        for row in summary.rows:
            ci = "n/a" if row.delta_m is None or math.isnan(row.delta_m.ci95) else f"±{row.delta_m.ci95:.2f}"
            body.append(
                [
                    row.label,
                    str(len(row.seeds)),
                    *(_pm(row.metrics[s.key], _decimals(s.unit)) for s in summary.metrics),
                    _pm(row.delta_m, 2),
                    ci,
                    _pm(row.delta_p, 2),
                    "n/a" if row.mean_rank is None else f"{row.mean_rank:.2f}",
                    _times(row.step_time_ratio),
                    _times(row.memory_ratio),
                ]
            )
        lines += _table(header, body)
        lines += ["", LEGEND]
        lines += _diagnostics_markdown(summary.rows)
        lines += _sweep_markdown(summary)
    else:
        lines.append("No MTL runs.")
    lines.append("")
    for note in summary.notes:
        lines += [f"> Note: {note}", ""]
    if summary.stl_rows:
        lines += ["Single-task (STL) runs:", ""]
        body = [
            [
                f"STL {row.task}",
                str(len(row.seeds)),
                *(
                    _pm(row.metrics.get(s.key), _decimals(s.unit)) if s.key in row.metrics else "—"
                    for s in summary.metrics
                ),
            ]
            for row in summary.stl_rows
        ]
        lines += _table(["task", "seeds", *metric_heads], body) + [""]
    return lines


def build_leaderboard(
    records: Sequence[Mapping[str, Any]], rule: str = "last", notes: Sequence[str] = ()
) -> str:
    """The Markdown leaderboard of ``records`` (finished runs), selecting epochs by ``rule``."""
    summaries = summarize(records, rule)
    lines = ["# mtobench leaderboard", "", _provenance(records), ""]
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


def load_records(records_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Finished records found (recursively) as ``*.json`` under ``records_dir``, outside W&B's ``wandb/`` folders,
    and notes on skipped ones."""
    root = Path(records_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"records directory {root} does not exist")
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    origin: dict[str, Path] = {}
    for path in sorted(root.rglob("*.json")):
        if "wandb" in path.relative_to(root).parts[:-1]:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot parse run record {path}: {exc}") from exc
        if not isinstance(record, dict) or "run_id" not in record:
            raise ValueError(f"{path} is not a run record (expected a JSON object with a 'run_id')")
        if record.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {record.get('schema_version')!r} is not supported "
                f"(expected {SCHEMA_VERSION})"
            )
        if record.get("status") != "finished":
            notes.append(
                f"skipped unfinished run {record['run_id']} (status {record.get('status')!r}, {path})"
            )
            continue
        if record["run_id"] in origin:
            raise ValueError(f"run {record['run_id']} appears twice: {origin[record['run_id']]} and {path}")
        origin[record["run_id"]] = path
        records.append(record)
    return records, notes


def write_leaderboard(
    records_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    rule: str = "last",
    plot: bool = False,
) -> Path:
    """Write the leaderboard of the records below ``records_dir`` to ``out_path``; with ``plot``, also the figures
    of ``benchmark.plots`` beside it, linked from a ``Figures`` section."""
    records, notes = load_records(records_dir)
    out = Path(out_path)
    text = build_leaderboard(records, rule, notes)
    if plot:
        from benchmark.plots import figures_markdown, write_figures

        text += figures_markdown(write_figures(records, out, rule), out)
    write_text_atomic(out, text)
    return out


def plot_leaderboard(
    records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str], rule: str = "last"
) -> Path | None:
    """A horizontal Δm bar chart (mean ± std over seeds), one panel per dataset; None if no Δm exists."""
    panels = [s for s in summarize(records, rule) if any(r.delta_m is not None for r in s.rows)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1.5, 0.4 * len(s.rows) + 1) for s in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, sum(heights)), squeeze=False)
    for ax, summary in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in summary.rows if r.delta_m is not None]
        ax.barh([r.label for r in rows], [r.delta_m.mean for r in rows], xerr=[r.delta_m.std for r in rows])
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("Δm% vs STL (lower is better)")
        ax.set_title(f"{summary.dataset} — {summary.suite} ({rule})")
    return _save(fig, out_path)


def _save(fig, out_path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_priorities(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]) -> Path | None:
    """How the share of channels owned by each task evolves per epoch (CSO's priority map; seed means), one
    panel per method variant that logs it; None if no run does."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        tasks = [t["name"] for t in r.get("tasks", [])]
        epochs = [e.get("method_stats") or {} for e in r.get("epochs", [])]
        for t in tasks:
            series = [e.get(f"priority/{t}") for e in epochs]
            if series and all(v is not None for v in series):
                curves[f"{r['suite']}/{r['dataset']}: {_label(r)}"][t].append(series)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 1, figsize=(6, 2.6 * len(curves)), squeeze=False)
    for ax, (title, per_task) in zip(axes[:, 0], sorted(curves.items()), strict=True):
        for task, runs in per_task.items():
            length = min(map(len, runs))
            mean = [sum(run[e] for run in runs) / len(runs) for e in range(length)]
            ax.plot(range(length), mean, marker="o", label=task)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of channels")
        ax.legend()
    return _save(fig, out_path)
