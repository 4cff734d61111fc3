"""Summaries of run records, computed once per leaderboard write: one ``DatasetSummary`` per ``(suite, dataset)``.

Within a group, MTL runs are grouped by ``method_label`` (else ``method``; split further by ``method_hparams`` if
those differ), each row aggregating its seeds. The STL baseline is :func:`benchmark.scoring.stl_baseline` (or a
published one, ``report/baselines.py``); Δm is computed per seed against it, then paired by seed with EW's and
with that of the row's control (``report/paired.py``), and the rows are ordered by the paired difference.
Nothing is skipped silently: unfinished runs, missing STL tasks and short logs each produce a note. Metrics of
auxiliary tasks (the record's ``tasks`` entry has ``auxiliary: true``, e.g. CSO's edges) are shown but enter
neither Δm, nor MR, nor the STL check.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.records import RecordMetric, check_record, group_metrics
from benchmark.report.baselines import MEASURED, match_metrics, published_baseline
from benchmark.report.convergence import Convergence, convergence
from benchmark.report.paired import Pairing, model_of, pair_rows
from benchmark.scoring import (
    LAST_K,
    SELECTION_RULES,
    ScoringSpec,
    SeedStats,
    delta_m_ci95,
    delta_p,
    mean_rank,
    record_scoring,
    seed_mean,
    seed_stats,
    select,
    select_with_info,
    signed_delta_m,
    stl_baseline,
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
    fewer_seeds: bool = False
    """Fewer seeds than the table's most-seeded row: listed after the full rows, not ranked (no MR)."""
    delta_m_seeds: dict[int, float] = field(default_factory=dict)
    """Δm per seed (empty without a baseline): what the paired comparison of ``report/paired.py`` pairs."""
    model_key: str = ""
    model: str = ""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """The row's model (``report/paired.py`` ``model_of``): compared by key, named by text, and its overrides."""
    vs_ew: Pairing | str | None = None
    """Δm − plain EW's Δm per seed (``report/paired.py``), ``reference`` on EW's own row, None without EW."""
    vs_control: Pairing | str | None = None
    """Δm − the Δm of EW on this row's modified model, per seed; None on the suite's own model."""
    plugin: str | None = None
    """``package version`` of a method from a plugin (:func:`plugin_of`); None for a built-in."""


@dataclass(frozen=True)
class NotScored:
    """A run left out of Δm, CIs and ranks: ``diverged`` or ``failed``, or finished with a non-finite selected
    metric (records written before the status was earned), and why."""

    run_id: str
    label: str
    kind: str
    seed: int
    status: str
    reason: str


UNCOMPARED = ("train.checkpoint_every_n_batches", "train.checkpoint_every_n_epochs",
              "dataset.params.data_dir", "dataset.params.generate_workers")
"""Settings that do not change the numbers, so rows may differ in them."""


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
    metrics: list[RecordMetric]
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
    scoring: ScoringSpec | None = None
    """The metric set Δm, Δp and MR use, Δm's sign and the ``best-val`` score (``record_scoring``)."""
    paired_warnings: list[str] = field(default_factory=list)
    """Missing references of the paired comparison: no plain EW, or no EW control on a row's modified model."""
    not_scored: list[NotScored] = field(default_factory=list)
    """Runs listed but left out of every score (see :class:`NotScored`)."""
    convergence: Convergence | None = None
    """The last epoch's change of the validation loss over the scored runs (``report/convergence.py``)."""


def label_of(record: Mapping[str, Any]) -> str:
    return str(record.get("method_label") or record["method"])


def plugin_of(record: Mapping[str, Any]) -> str | None:
    """``package version`` of the plugin a record's method came from (its ``method_origin``, ``entry point 'name'
    (module:Class) of package pkg``, and the package's entry in ``versions``); None for a built-in method."""
    origin = str(record.get("method_origin") or "built-in")
    if origin == "built-in":
        return None
    package = origin.rpartition(" of package ")[2] or origin
    return f"{package} {(record.get('versions') or {}).get(package, '(version not recorded)')}"


def _variant_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """Runs of one label differ as variants if their hyper-parameters or model overrides (e.g. task_bn) differ."""
    overrides = (record.get("model") or {}).get("overrides") or {}
    hparams = {**(record.get("method_hparams") or {}), **{f"model.{k}": v for k, v in overrides.items()}}
    if record.get("update_every", 1) != 1:
        hparams["update_every"] = record["update_every"]
    return label_of(record), json.dumps(hparams, sort_keys=True, default=str)


def _variant_label(label: str, hparams_json: str, ambiguous: bool) -> str:
    if not ambiguous:
        return label
    hparams = json.loads(hparams_json)
    return f"{label} ({', '.join(f'{k}={v}' for k, v in hparams.items())})" if hparams else label


def _ew_records(mtl: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The EW runs timing ratios refer to: those labelled ``ew`` if any, else every run of method ``ew``."""
    ew = [r for r in mtl if r["method"] == EW_METHOD]
    plain = [r for r in ew if label_of(r) == EW_METHOD]
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

def _measured_baseline(
    stl: Sequence[Mapping[str, Any]], specs: Sequence[RecordMetric], picks: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, float], list[str], list[str]]:
    """The measured baseline of ``specs`` (metrics without one left out), the tasks without STL runs, and notes."""
    found = stl_baseline(stl, specs, picks)
    notes = []
    for spec in specs:
        if spec.key in found.lacking:
            notes.append(f"STL runs {', '.join(found.lacking[spec.key])} lack metric `{spec.key}`; it has no baseline.")
        elif spec.key in found.undefined:
            notes.append(f"The STL baseline of `{spec.key}` is {found.means[spec.key]}: its relative change is "
                         "undefined, Δm is n/a.")
    return found.values, found.missing_tasks, notes


def _val_baseline(stl: Sequence[Mapping[str, Any]], specs: Sequence[RecordMetric]) -> dict[str, float] | None:
    """STL val metrics at each STL run's best-val epoch (lowest val loss), averaged; None if incomplete."""
    found = stl_baseline(stl, specs, {r["run_id"]: select(r, "best-val", "val") for r in stl})
    return found.means if found.complete else None


def summarize(records: Sequence[Mapping[str, Any]], rule: str = "last") -> list[DatasetSummary]:
    """Aggregate finished run records into one ``DatasetSummary`` per ``(suite, dataset)``."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid rules: {', '.join(SELECTION_RULES)}")
    seen: dict[str, Mapping[str, Any]] = {}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    skipped: dict[tuple[str, str], list[str]] = defaultdict(list)
    unscored: dict[tuple[str, str], list[NotScored]] = defaultdict(list)
    for record in records:
        check_record(record)
        group = (str(record["suite"]), str(record["dataset"]))
        if record.get("status") in ("diverged", "failed"):
            unscored[group].append(_not_scored(record, record["status"], str(record.get("status_reason") or "")))
            continue
        if record.get("status", "finished") != "finished":
            skipped[group].append(f"skipped unfinished run {record['run_id']} (status {record['status']!r}).")
            continue
        if record["run_id"] in seen:
            raise ValueError(f"run {record['run_id']} appears twice; it must not be counted twice")
        seen[record["run_id"]] = record
        groups[group].append(record)
    return [
        _summarize_group(suite, dataset, groups[(suite, dataset)], rule, skipped[(suite, dataset)],
                         unscored[(suite, dataset)])
        for suite, dataset in sorted(set(groups) | set(skipped) | set(unscored))
    ]


def _not_scored(record: Mapping[str, Any], status: str, reason: str) -> NotScored:
    return NotScored(str(record["run_id"]), label_of(record), str(record["kind"]), record["seed"], status, reason)


def _unscorable(record: Mapping[str, Any], rule: str) -> str | None:
    """Why a finished record cannot be scored (a selected test metric that is not finite), else None."""
    try:
        values = select(record, "last" if rule == "best-val" else rule, "test")
    except ValueError as exc:
        return str(exc)
    bad = sorted(k for k in record["metrics"] if not math.isfinite(values.get(k, math.nan)))
    return f"non-finite selected test metric(s) {', '.join(bad)}" if bad else None


def _missing_seed_notes(not_scored: Sequence[NotScored], rows: Sequence[MethodRow]) -> list[str]:
    """A warning per method whose row lacks seeds because they were not scored."""
    by_label: dict[str, list[NotScored]] = defaultdict(list)
    for entry in not_scored:
        if entry.kind == "mtl":
            by_label[entry.label].append(entry)
    notes = []
    for label, entries in sorted(by_label.items()):
        row = next((r for r in rows if r.label == label or r.label.startswith(f"{label} (")), None)
        seeds = ", ".join(f"{e.seed} ({e.status})" for e in entries)
        kept = f"its row averages the other {len(row.seeds)} seed(s)" if row else "it has no row"
        notes.append(f"**Warning:** `{label}` is missing seed(s) {seeds}, not scored; {kept}.")
    return notes


def _settings_note(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning naming the training, model or dataset settings in which the runs of one table differ."""

    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, Mapping) and value:
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}").items()}
        return {prefix: value}

    seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        config = record.get("config") or {}
        for part in ("train", "model", "dataset"):
            for key, value in flat(config.get(part, {}), part).items():
                if key not in UNCOMPARED:
                    seen[key][json.dumps(value, sort_keys=True, default=str)].append(str(record["run_id"]))
    differing = {k: v for k, v in seen.items() if len(v) > 1}
    if not differing:
        return []

    def where(value: str, runs: list[str]) -> str:
        return f"{value}: {runs[0]}" + (f" and {len(runs) - 1} more" if len(runs) > 1 else "")

    parts = [f"`{k}` ({'; '.join(where(v, runs) for v, runs in values.items())})"
             for k, values in sorted(differing.items())]
    return ["**Warning:** the runs of this table were trained with different settings: " + ", ".join(parts) + "."]

def _short_log_note(rule: str, short: Mapping[str, int], total: int) -> str:
    listed = ", ".join(f"{run} ({n})" for run, n in list(short.items())[:5])
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    return (
        f"`{rule}`: {len(short)} of {total} runs have fewer than {LAST_K} epochs (as few as "
        f"{min(short.values())}); all their epochs were averaged: {listed}{more}."
    )


def _val_criterion(rule: str, val_baseline: Mapping[str, float] | None, select_on: str = "delta_m") -> str:
    if rule != "best-val":
        return rule
    if val_baseline is not None:
        score = "highest Δp" if select_on == "delta_p" else "lowest Δm"
        return f"{score} of the val metrics against the STL val baseline; STL runs: lowest val loss"
    return "lowest summed val loss, since the STL val baseline is incomplete"


def _pick(
    records: Sequence[Mapping[str, Any]], rule: str, val_baseline: Mapping[str, float] | None,
    select_on: str = "delta_m",
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Selected test metrics per run id, and a note when ``last10`` had fewer than 10 epochs to average."""
    picks: dict[str, dict[str, float]] = {}
    short: dict[str, int] = {}
    for record in records:
        baseline_for = val_baseline if record["kind"] == "mtl" else None
        picks[record["run_id"]], info = select_with_info(record, rule, "test", baseline_for, select_on)
        if info.note:
            short[record["run_id"]] = len(info.epochs)
    return picks, [_short_log_note(rule, short, len(records))] if short else []


def _method_rows(
    mtl: Sequence[Mapping[str, Any]],
    specs: Sequence[RecordMetric],
    picks: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, float] | None,
    delta_keys: Sequence[str] | None = None,
    scoring: ScoringSpec | None = None,
    stl_runs: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
) -> list[MethodRow]:
    """One row per method variant, sorted by Δm (n/a and NaN last, rows with fewer seeds after the others);
    ``baseline`` None means no Δm. Δm and Δp are over ``delta_keys`` (default: the scored metrics), MR over the
    ``scoring`` set (default: every non-auxiliary metric), Δm in its sign; the Δm CI counts the variance of the
    measured STL runs ``stl_runs`` (per task, their selected values; None: a published baseline, taken as exact).
    MR ranks only the rows with the most seeds."""
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
    direction = {s.key: s.direction for s in specs}
    ranked = list(scoring.metrics) if scoring is not None else [s.key for s in specs if not s.auxiliary]
    rank_directions = {k: direction[k] for k in ranked}
    delta_directions = {k: direction[k] for k in (delta_keys if delta_keys is not None else ranked)}
    higher_is_better = scoring.higher_is_better if scoring is not None else False
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
        dm_seeds = {} if baseline is None else {
            r["seed"]: signed_delta_m(v, baseline, delta_directions, higher_is_better)
            for r, v in zip(runs, values, strict=True)}
        dm = None if baseline is None else _delta_m_stats(values, baseline, delta_directions, higher_is_better,
                                                          stl_runs)
        models = {model_of(r) for r in runs}
        if len(models) > 1:
            raise ValueError(f"{label}: its runs were trained on different models {sorted(t for _, t in models)}")
        (model_key, model_text), = models
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
                delta_m_seeds=dm_seeds,
                model_key=model_key,
                model=model_text,
                model_overrides=dict((runs[0].get("model") or {}).get("overrides") or {}),
                plugin=plugin_of(runs[0]),
            )
        )
    if rows:
        most = max(len(r.seeds) for r in rows)
        rows = [_with(r, fewer_seeds=len(r.seeds) < most) for r in rows]
        full = [r for r in rows if not r.fewer_seeds]
        if rank_directions:
            ranks = mean_rank({r.label: {k: r.metrics[k].mean for k in rank_directions} for r in full},
                              rank_directions)
            rows = [_with(r, mean_rank=ranks[r.label]) if r.label in ranks else r for r in rows]
    return sorted(rows, key=lambda r: _row_order(r, higher_is_better))


def _delta_m_stats(
    values: Sequence[Mapping[str, float]], baseline: Mapping[str, float], directions: Mapping[str, str],
    higher_is_better: bool, stl_runs: Mapping[str, Sequence[Mapping[str, float]]] | None,
) -> SeedStats:
    """Seed statistics of Δm whose CI also counts the STL baseline's seed variance (``delta_m_ci95``)."""
    per_seed = [signed_delta_m(v, baseline, directions, higher_is_better) for v in values]
    plain = seed_stats(per_seed)
    means = {k: seed_mean([v[k] for v in values]) for k in directions}
    ci = delta_m_ci95(per_seed, means, baseline, directions, stl_runs)
    return SeedStats(plain.mean, plain.std, ci, plain.n)


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

def _stl_rows(
    stl: Sequence[Mapping[str, Any]], specs: Sequence[RecordMetric], picks: Mapping[str, Mapping[str, float]]
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
    suite: str, dataset: str, records: Sequence[Mapping[str, Any]], rule: str, skipped: Sequence[str],
    unscored: Sequence[NotScored] = (),
) -> DatasetSummary:
    not_scored = list(unscored)
    settings = _settings_note(records)
    for record in records:
        why = _unscorable(record, rule)
        if why is not None:
            not_scored.append(_not_scored(record, "finished", why))
    specs = group_metrics(records)
    scoring = record_scoring(records, specs)
    left_out = {n.run_id for n in not_scored}
    records = [r for r in records if r["run_id"] not in left_out]
    scored = [s for s in specs if s.key in scoring.metrics]
    shown = [s for s in specs if not s.auxiliary]
    mtl = [r for r in records if r["kind"] == "mtl" and not r.get("sweep")]
    sweep = [r for r in records if r["kind"] == "mtl" and r.get("sweep")]
    stl = [r for r in records if r["kind"] == "stl"]
    val_baseline = _val_baseline(stl, scored) if rule == "best-val" else None
    picks, notes = _pick(records, rule, val_baseline, scoring.select_on)
    choice = _stl_choice(records)
    if choice == MEASURED:
        baseline, missing_tasks, stl_notes = _measured_baseline(stl, shown, picks)
        source = MEASURED
        delta_keys = [s.key for s in scored] if scored and all(s.key in baseline for s in scored) else None
        if missing_tasks:
            stl_notes.append(f"No STL run for task(s) {', '.join(missing_tasks)}"
                             f"{': Δm is n/a' if delta_keys is None else ' (none of their metrics is scored)'}.")
    else:
        published = published_baseline(choice)
        baseline, unmatched = match_metrics(published.values, [s.key for s in shown])
        unmatched = [k for k in unmatched if k in scoring.metrics]
        source = f"published `{published.id}` ({published.source}; {Path(published.path).name})"
        missing_tasks = sorted({s.task for s in shown if not any(k.startswith(f"{s.task}/") for k in baseline)})
        stl_notes = [f"Metrics without a published baseline value, left out of Δm: {', '.join(unmatched)}."] \
            if unmatched else []
        delta_keys = [s.key for s in scored if s.key in baseline] or None
    notes = [*skipped, *notes, *stl_notes]
    if rule == "best-val" and any(r.get("dataset_info", {}).get("val_is_test") for r in records):
        notes.append("**Warning:** the validation split of these runs is the test split (dataset `val_size: 0`), "
                     "so `best-val` selects on test, as LibMTL does; the numbers are optimistic.")
    stl_runs = _stl_samples(stl, scored, picks) if choice == MEASURED else None
    scored_args = (baseline if delta_keys else None, delta_keys, scoring, stl_runs)
    rows, paired_warnings = pair_rows(_method_rows(mtl, specs, picks, *scored_args),
                                      scoring.higher_is_better if scoring else False)
    sweep_rows = _method_rows(sweep, specs, picks, *scored_args) if sweep else []
    front, dominated = _judge(rows, sweep_rows, specs, baseline, delta_keys, notes)
    notes += [*settings, *_missing_seed_notes(not_scored, rows)]
    return DatasetSummary(
        suite,
        dataset,
        rule,
        _val_criterion(rule, val_baseline, scoring.select_on),
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
        scoring,
        paired_warnings,
        not_scored,
        convergence([*mtl, *stl]),
    )


def _stl_samples(
    stl: Sequence[Mapping[str, Any]], scored: Sequence[RecordMetric], picks: Mapping[str, Mapping[str, float]]
) -> dict[str, list[dict[str, float]]]:
    """Per STL task, the selected values of its scored metrics, one dict per STL run (for the Δm CI)."""
    keys = {s.key for s in scored}
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for record in stl:
        out[record["stl_task"]].append({k: v for k, v in picks[record["run_id"]].items() if k in keys})
    return dict(out)


def _stl_choice(records: Sequence[Mapping[str, Any]]) -> str:
    """The suite's ``stl_baseline`` (``measured`` for records written before the field existed)."""
    choices = {str((r.get("config") or {}).get("stl_baseline") or MEASURED) for r in records}
    if len(choices) > 1:
        raise ValueError(f"the records of one suite name different stl_baseline values {sorted(choices)}")
    return choices.pop() if choices else MEASURED


def _judge(
    rows: Sequence[MethodRow], sweep_rows: Sequence[MethodRow], specs: Sequence[RecordMetric],
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


def _with(row: MethodRow, **changes: Any) -> MethodRow:
    return MethodRow(**{**row.__dict__, **changes})


def _row_order(row: MethodRow, higher_is_better: bool = False) -> tuple[bool, bool, float, str]:
    """Full-seed rows first, then best Δm first (lowest, or highest in the CSO sign), n/a and NaN last."""
    value = row.delta_m.mean if row.delta_m is not None else math.nan
    value = -value if higher_is_better else value
    return (row.fewer_seeds, math.isnan(value), 0.0 if math.isnan(value) else value, row.label)

