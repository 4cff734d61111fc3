"""Scores derived from run records: Δm, Δp, mean rank, epoch selection, seed statistics, reference tables.

Everything here works on plain data (mappings of metric name to value, run records loaded from JSON) and
needs no GPU. Definitions follow ``docs/protocols.md`` §M.6:

* ``delta_m``: metric-level Δm% (Maninis et al.; the Nash-MTL convention), **lower is better**.
* ``delta_p``: task-level Δp% (LibMTL ``count_improvement``), **higher is better**.
* ``mean_rank``: per-metric rank across methods (1 = best, ties averaged, NaN last), averaged per method.
* ``stl_baseline``: the one measured single-task baseline, the mean over a task's STL runs of a selection.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmark.records import RecordMetric, metric_directions, record_metric

DIRECTIONS = ("higher", "lower")
SELECTION_RULES = ("last", "last10", "best-val")
SELECT_ON = ("delta_m", "delta_p")
"""What ``best-val`` ranks validation epochs by: Δm (lowest wins) or Δp (highest wins; LibMTL, DB-MTL)."""
TIE_RULES = ("average", "min")
LAST_K = 10
SHARED_ENV = "MTOBENCH_SHARED"
REFERENCE_TABLES_RELPATH = Path("research") / "reference_tables.yaml"
DEFAULT_TOLERANCE = 0.02


def _sign(direction: str, key: str) -> int:
    """+1 when lower is better, -1 when higher is better (the factor turning a change into a loss)."""
    if direction == "lower":
        return 1
    if direction == "higher":
        return -1
    raise ValueError(f"metric {key!r}: direction {direction!r} is not one of {DIRECTIONS}")


def _num(value: Any) -> float:
    """A metric value as float; ``None`` (how run records store NaN in strict JSON) becomes NaN."""
    return math.nan if value is None else float(value)


def _relative_change(
    key: str, values: Mapping[str, float], baseline: Mapping[str, float], sign: int
) -> float:
    """Signed relative change of one metric: positive means worse than the baseline."""
    if key not in values:
        raise KeyError(f"metric {key!r} is missing from the values (have {sorted(values)})")
    if key not in baseline:
        raise KeyError(f"metric {key!r} is missing from the baseline (have {sorted(baseline)})")
    base = float(baseline[key])
    if base == 0.0:
        raise ValueError(f"metric {key!r}: the baseline is 0, so its relative change is undefined")
    return sign * (_num(values[key]) - base) / base


def delta_m(
    values: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, str]
) -> float:
    """Δm% = (100/K) Σ_k s_k (M_k − B_k)/B_k over every metric of ``directions``; lower is better.

    ``s_k`` is −1 for a higher-is-better metric and +1 otherwise. A NaN value gives a NaN result.
    """
    if not directions:
        raise ValueError("delta_m needs at least one metric in directions")
    changes = [_relative_change(k, values, baseline, _sign(d, k)) for k, d in directions.items()]
    return 100.0 * sum(changes) / len(changes)


def signed_delta_m(
    values: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, str],
    higher_is_better: bool = False,
) -> float:
    """Δm% in either sign convention of ``docs/protocols.md`` §M.6: the Maninis form (lower is better) or, with
    ``higher_is_better``, its negative (CSO / Vandenhende: positive is an improvement)."""
    value = delta_m(values, baseline, directions)
    return -value if higher_is_better else value


def delta_p(
    values: Mapping[str, float],
    baseline: Mapping[str, float],
    directions: Mapping[str, str],
    task_groups: Mapping[str, Sequence[str]],
) -> float:
    """LibMTL Δp%: the signed improvement averaged within each task, then over tasks; higher is better."""
    if not task_groups:
        raise ValueError("delta_p needs at least one task in task_groups")
    per_task = []
    for task, keys in task_groups.items():
        if not keys:
            raise ValueError(f"delta_p: task {task!r} has no metrics")
        missing = [k for k in keys if k not in directions]
        if missing:
            raise KeyError(f"delta_p: task {task!r} lists metrics without a direction: {missing}")
        gains = [-_relative_change(k, values, baseline, _sign(directions[k], k)) for k in keys]
        per_task.append(sum(gains) / len(gains))
    return 100.0 * sum(per_task) / len(per_task)


def _ranks(scores: Sequence[float], ties: str) -> list[float]:
    """Ranks of ``scores`` (lower score = rank 1); NaN ranks last and NaNs tie with each other.

    Tied scores share the average of the ranks they span (``ties="average"``) or the smallest of them
    (``ties="min"``, competition ranking "1224").
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r} is not one of {TIE_RULES}")

    def order(i: int) -> tuple[bool, float]:
        return (math.isnan(scores[i]), 0.0 if math.isnan(scores[i]) else scores[i])

    keyed = sorted(range(len(scores)), key=order)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(keyed):
        end = start
        while end + 1 < len(keyed) and order(keyed[end + 1]) == order(keyed[start]):
            end += 1
        rank = (start + end) / 2 + 1 if ties == "average" else start + 1.0
        for pos in range(start, end + 1):
            ranks[keyed[pos]] = rank
        start = end + 1
    return ranks


def mean_rank(
    table: Mapping[str, Mapping[str, float]], directions: Mapping[str, str], ties: str = "average"
) -> dict[str, float]:
    """Mean over the metrics of ``directions`` of each method's rank (1 = best).

    Tied values share the average of the ranks they span (``ties="min"`` gives them the best of those ranks
    instead, as some papers do). A NaN value ranks last (NaNs tie with each other), so a diverged run is never
    rewarded. A missing value is an error, not a NaN.
    """
    if not directions:
        raise ValueError("mean_rank needs at least one metric in directions")
    methods = list(table)
    totals = dict.fromkeys(methods, 0.0)
    for key, direction in directions.items():
        sign = _sign(direction, key)
        scores = []
        for method in methods:
            if key not in table[method]:
                raise KeyError(f"mean_rank: method {method!r} has no value for metric {key!r}")
            scores.append(sign * _num(table[method][key]))
        for method, rank in zip(methods, _ranks(scores, ties), strict=True):
            totals[method] += rank
    return {m: totals[m] / len(directions) for m in methods}


@dataclass(frozen=True)
class ScoringSpec:
    """What a leaderboard scores (``docs/protocols.md`` §M.6): the metric keys Δm, Δp and MR use, Δm's sign
    convention, the score ``best-val`` selects on, and where the set was declared (``source``)."""

    metrics: tuple[str, ...]
    higher_is_better: bool = False
    select_on: str = "delta_m"
    source: str = "every non-auxiliary metric"

    def __post_init__(self) -> None:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"scoring.metrics={list(self.metrics)!r} names a metric twice")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"scoring.select_on={self.select_on!r} is not one of {SELECT_ON}")
        if not isinstance(self.higher_is_better, bool):
            raise ValueError(f"scoring.higher_is_better={self.higher_is_better!r} must be true or false")

    def to_record(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "higher_is_better": self.higher_is_better,
                "select_on": self.select_on, "source": self.source}


def record_scoring(records: Sequence[Mapping[str, Any]], metrics: Sequence[RecordMetric]) -> ScoringSpec:
    """The scoring set the records carry (``record["scoring"]``, written by the runner); every record that has one
    must agree. Records without one (written before the field existed) score every non-auxiliary metric of
    ``metrics``. A named metric that no record logs is an error."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for record in records:
        entry = record.get("scoring")
        if entry is not None:
            found.setdefault(json.dumps(entry, sort_keys=True, default=str), (str(record.get("run_id")), entry))
    if len(found) > 1:
        shown = "; ".join(f"run {run}: {entry}" for run, entry in found.values())
        raise ValueError(f"the records of one leaderboard declare different scoring sets: {shown}")
    if not found:
        return ScoringSpec(tuple(m.key for m in metrics if not m.auxiliary))
    run, entry = next(iter(found.values()))
    spec = ScoringSpec(tuple(entry["metrics"]), bool(entry.get("higher_is_better", False)),
                       str(entry.get("select_on", "delta_m")), str(entry.get("source", "the records")))
    known = {m.key for m in metrics}
    unknown = [k for k in spec.metrics if k not in known]
    if unknown:
        raise ValueError(f"run {run}: scoring.metrics names {unknown}, which the records do not log "
                         f"(have {sorted(known)})")
    return spec


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample std (ddof=1; 0 for one seed) and 95% CI half-width (Student t; NaN for one seed)."""

    mean: float
    std: float
    ci95: float
    n: int


def seed_mean(values: Sequence[float]) -> float:
    """Arithmetic mean over seeds."""
    if not values:
        raise ValueError("seed statistics need at least one value")
    return statistics.fmean(float(v) for v in values)


def seed_std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (ddof=1); 0 for a single seed."""
    if not values:
        raise ValueError("seed statistics need at least one value")
    if len(values) == 1:
        return 0.0
    mean = seed_mean(values)
    return math.sqrt(sum((float(v) - mean) ** 2 for v in values) / (len(values) - 1))


def ci95_half_width(values: Sequence[float]) -> float:
    """Half-width t_{0.975, n−1} · s / √n of the 95% confidence interval of the mean; NaN for one seed."""
    n = len(values)
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) * seed_std(values) / math.sqrt(n)


def seed_stats(values: Sequence[float]) -> SeedStats:
    """All seed statistics of ``values`` at once."""
    return SeedStats(seed_mean(values), seed_std(values), ci95_half_width(values), len(values))


def delta_m_ci95(
    per_seed: Sequence[float],
    means: Mapping[str, float],
    baseline: Mapping[str, float],
    directions: Mapping[str, str],
    stl_runs: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
) -> float:
    """95% CI half-width of the mean Δm over seeds, counting a measured STL baseline's own seed variance
    (``docs/protocols.md`` §M.7).

    ``per_seed``: the method's Δm per seed; ``means``: its seed mean per metric; ``stl_runs``: per STL task, the
    per-seed values of that task's metrics the baseline averages (None or empty: a published baseline, exact).
    The variance of the mean is V = s²_Δ/n plus, per STL task t, s²(u_t)/n_t with u_t = Σ_{k∈t} g_k B_{k,j} the
    first-order effect of STL seed j (g_k = ∂Δm/∂B_k = −100/K · s_k M_k/B_k²); the half-width is
    t_{0.975, ν} √V with the conservative ν = min(n_i − 1) over the terms with variance, so counting the baseline
    never narrows the interval. NaN when any variance needs a second seed it does not have.
    """
    n = len(per_seed)
    if n < 2:
        return math.nan
    parts = [(seed_std(per_seed) ** 2 / n, n - 1)]
    for runs in (stl_runs or {}).values():
        keys = [k for k in directions if k in runs[0]] if runs else []
        if not keys:
            continue
        if len(runs) < 2:
            return math.nan
        grad = {k: -100.0 / len(directions) * _sign(directions[k], k) * _num(means[k]) / float(baseline[k]) ** 2
                for k in keys}
        effects = [sum(grad[k] * _num(run[k]) for k in keys) for run in runs]
        parts.append((seed_std(effects) ** 2 / len(runs), len(runs) - 1))
    total = sum(v for v, _ in parts)
    if total == 0:
        return 0.0
    dof = min(d for v, d in parts if v > 0)
    from scipy.stats import t

    return float(t.ppf(0.975, dof)) * math.sqrt(total)


def aggregate_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, SeedStats]:
    """Per-metric seed statistics of several runs; every run must have the same metric keys."""
    if not per_seed:
        raise ValueError("aggregate_seeds needs at least one run")
    keys = list(per_seed[0])
    for i, run in enumerate(per_seed):
        if set(run) != set(keys):
            raise KeyError(f"aggregate_seeds: run {i} has metrics {sorted(run)}, expected {sorted(keys)}")
    return {k: seed_stats([run[k] for run in per_seed]) for k in keys}


@dataclass(frozen=True)
class Selection:
    """Which epochs a selection rule used, by which criterion, and any caveat (``note``)."""

    rule: str
    split: str
    epochs: tuple[int, ...]
    criterion: str
    note: str | None = None


def _run_name(record: Mapping[str, Any]) -> str:
    return str(record.get("run_id", "<record without run_id>"))


def _epochs(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The record's epoch entries in epoch order; empty or duplicated epochs are errors."""
    entries = record.get("epochs")
    if not entries:
        raise ValueError(f"run {_run_name(record)}: the record has no epochs")
    ordered = sorted(entries, key=lambda e: e.get("epoch", 0))
    numbers = [e.get("epoch") for e in ordered]
    if None not in numbers and len(set(numbers)) != len(numbers):
        raise ValueError(f"run {_run_name(record)}: an epoch is logged more than once ({numbers})")
    return ordered


def _split_metrics(record: Mapping[str, Any], entry: Mapping[str, Any], split: str) -> dict[str, float]:
    if split not in entry or not isinstance(entry[split], Mapping):
        raise ValueError(f"run {_run_name(record)}: epoch {entry.get('epoch')} has no {split!r} metrics")
    return {k: _num(v) for k, v in entry[split].items()}


def _summed_val_loss(record: Mapping[str, Any], entry: Mapping[str, Any]) -> float:
    if "val_loss" not in entry:
        raise ValueError(
            f"run {_run_name(record)}: epoch {entry.get('epoch')} has no 'val_loss'; best-val without a "
            "val_baseline selects on the summed validation loss"
        )
    loss = entry["val_loss"]
    return sum(_num(v) for v in loss.values()) if isinstance(loss, Mapping) else _num(loss)


def _best_val_index(
    record: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], val_baseline: Mapping[str, float] | None,
    select_on: str = "delta_m",
) -> tuple[int, str]:
    """Index of the best validation epoch (NaN scores count as worst; ties go to the earliest epoch): the lowest Δm
    or the highest Δp (``select_on``) against ``val_baseline``, else the lowest summed val loss."""
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on={select_on!r} is not one of {SELECT_ON}")
    if val_baseline is not None:
        directions = metric_directions(record, val_baseline)
        if select_on == "delta_p":
            groups: dict[str, list[str]] = {}
            for key in directions:
                groups.setdefault(record_metric(key, record["metrics"][key]).task, []).append(key)
            scores = [-delta_p(_split_metrics(record, e, "val"), val_baseline, directions, groups) for e in entries]
            criterion = "highest Δp of the val metrics against the val baseline"
        else:
            scores = [delta_m(_split_metrics(record, e, "val"), val_baseline, directions) for e in entries]
            criterion = "lowest Δm of the val metrics against the val baseline"
    else:
        scores = [_summed_val_loss(record, e) for e in entries]
        criterion = "lowest summed val loss"
    keyed = [math.inf if math.isnan(s) else s for s in scores]
    return keyed.index(min(keyed)), criterion


def select_with_info(
    record: Mapping[str, Any],
    rule: str,
    split: str = "test",
    val_baseline: Mapping[str, float] | None = None,
    select_on: str = "delta_m",
) -> tuple[dict[str, float], Selection]:
    """Metrics of ``split`` chosen by ``rule``, with a description of what was used.

    * ``last``: the last epoch.
    * ``last10``: the per-metric mean over the last 10 epochs (all of them, with a note, if fewer exist).
    * ``best-val``: the epoch with the lowest Δm (``select_on="delta_m"``) or the highest Δp (``"delta_p"``,
      the LibMTL / DB-MTL protocol) of its ``val`` metrics against ``val_baseline`` (over the baseline's
      metrics) when one is given, else the lowest summed ``val_loss``; NaN scores count as worst, ties go to
      the earliest epoch.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid rules: {', '.join(SELECTION_RULES)}")
    entries = _epochs(record)
    if rule == "last":
        chosen, criterion, note = entries[-1:], "last epoch", None
    elif rule == "last10":
        chosen, criterion = entries[-LAST_K:], f"mean of the last {LAST_K} epochs"
        note = None if len(chosen) == LAST_K else f"only {len(chosen)} epochs exist; averaged all of them"
    else:
        index, criterion = _best_val_index(record, entries, val_baseline, select_on)
        chosen, note = [entries[index]], None
    per_epoch = [_split_metrics(record, e, split) for e in chosen]
    keys = list(per_epoch[0])
    for e, metrics in zip(chosen, per_epoch, strict=True):
        if set(metrics) != set(keys):
            raise ValueError(
                f"run {_run_name(record)}: epoch {e.get('epoch')} has {split} metrics {sorted(metrics)}, "
                f"expected {sorted(keys)}"
            )
    values = {k: statistics.fmean(m[k] for m in per_epoch) for k in keys}
    info = Selection(rule, split, tuple(int(e.get("epoch", -1)) for e in chosen), criterion, note)
    return values, info


def select(
    record: Mapping[str, Any],
    rule: str,
    split: str = "test",
    val_baseline: Mapping[str, float] | None = None,
    select_on: str = "delta_m",
) -> dict[str, float]:
    """Metrics of ``split`` chosen by ``rule`` (see ``select_with_info`` for the rules)."""
    return select_with_info(record, rule, split, val_baseline, select_on)[0]


@dataclass(frozen=True)
class StlBaseline:
    """The measured STL baseline of some metrics: the seed mean of each metric all its task's STL runs have
    (``means``, which may be 0 or NaN), the tasks without STL runs, and per metric the STL runs lacking it."""

    means: dict[str, float]
    missing_tasks: list[str]
    lacking: dict[str, list[str]]

    @property
    def values(self) -> dict[str, float]:
        """The means a relative change can be taken against (neither 0 nor NaN)."""
        return {k: v for k, v in self.means.items() if v != 0 and not math.isnan(v)}

    @property
    def undefined(self) -> list[str]:
        """The metrics whose mean is 0 or NaN."""
        return [k for k in self.means if k not in self.values]

    @property
    def complete(self) -> bool:
        """Every metric has STL runs, and all of them have its value."""
        return not self.missing_tasks and not self.lacking


def stl_baseline(
    stl: Sequence[Mapping[str, Any]], metrics: Sequence[RecordMetric], picks: Mapping[str, Mapping[str, float]]
) -> StlBaseline:
    """Per metric, the mean over the STL runs of its task (``stl_task``) of the value ``picks[run_id]`` selected
    for it (``docs/protocols.md``: Δm is measured against single-task runs of the same protocol)."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for record in stl:
        by_task.setdefault(record["stl_task"], []).append(record)
    means: dict[str, float] = {}
    missing: list[str] = []
    lacking: dict[str, list[str]] = {}
    for metric in metrics:
        runs = by_task.get(metric.task, [])
        if not runs:
            if metric.task not in missing:
                missing.append(metric.task)
            continue
        without = [r["run_id"] for r in runs if metric.key not in picks[r["run_id"]]]
        if without:
            lacking[metric.key] = without
            continue
        means[metric.key] = seed_mean([picks[r["run_id"]][metric.key] for r in runs])
    return StlBaseline(means, missing, lacking)


BUNDLED_REFERENCE_TABLES = Path(__file__).resolve().parent / "reference_tables.yaml"
"""A copy of ``shared/research/reference_tables.yaml`` shipped with the package (a test keeps it in sync)."""


def shared_reference_path() -> Path:
    """``$MTOBENCH_SHARED/research/reference_tables.yaml`` (or the YAML file it names), else
    ``<repo root>/../shared/research/reference_tables.yaml``; the file may not exist."""
    env = os.environ.get(SHARED_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.suffix in (".yaml", ".yml") else path / REFERENCE_TABLES_RELPATH
    return Path(__file__).resolve().parent.parent.parent / "shared" / REFERENCE_TABLES_RELPATH


def default_reference_path() -> Path:
    """The shared reference tables when ``$MTOBENCH_SHARED`` is set, else the bundled copy."""
    return shared_reference_path() if os.environ.get(SHARED_ENV) else BUNDLED_REFERENCE_TABLES


def load_reference_tables(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """The tables of ``reference_tables.yaml`` keyed by their ``id``."""
    import yaml

    resolved = Path(path) if path is not None else default_reference_path()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"reference tables not found at {resolved}; set {SHARED_ENV} to the shared directory "
            f"(holding {REFERENCE_TABLES_RELPATH}) or to the YAML file itself"
        )
    with resolved.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    tables = data.get("tables") if isinstance(data, Mapping) else None
    if not isinstance(tables, list):
        raise ValueError(f"{resolved}: expected a top-level 'tables' list")
    by_id: dict[str, dict[str, Any]] = {}
    for table in tables:
        if table["id"] in by_id:
            raise ValueError(f"{resolved}: table id {table['id']!r} appears twice")
        by_id[table["id"]] = table
    return by_id


def _decimals(x: float) -> int:
    """Digits after the decimal point in the shortest printed form of ``x``."""
    return max(0, -Decimal(repr(x)).as_tuple().exponent)


def _half_units(columns: Iterable[Mapping[str, float]], keys: Iterable[str]) -> dict[str, float]:
    """Half a unit of the last printed digit per metric (the most digits seen in that column)."""
    cols = list(columns)
    return {k: 0.5 * 10.0 ** -max(_decimals(float(c[k])) for c in cols if k in c) for k in keys}


def _table_delta(table: Mapping[str, Any]) -> tuple[Any, dict[str, str]] | None:
    """The Δ function ``f(values, baseline)`` of a table and the metric directions it uses, if defined."""
    spec = table.get("delta")
    baseline = (table.get("baseline") or {}).get("values")
    if not spec or not baseline:
        return None
    all_dirs = {m["key"]: m["direction"] for m in table.get("metrics", [])}
    keys = spec.get("metrics") or list(all_dirs)
    directions = {k: all_dirs[k] for k in keys}
    if spec["name"] == "delta_p":
        groups = spec["task_groups"]
        return (lambda v, b: delta_p(v, b, directions, groups)), directions
    if spec["name"] == "delta_m":
        higher = spec.get("direction", "lower") == "higher"
        return (lambda v, b: signed_delta_m(v, b, directions, higher)), directions
    raise ValueError(f"table {table.get('id')!r}: unknown delta name {spec['name']!r}")


def _rounding_bound(
    fn: Any, values: Mapping[str, float], baseline: Mapping[str, float], half: Mapping[str, float]
) -> float:
    """First-order worst-case change of Δ when every printed value moves by half a unit of its last digit."""
    centre = fn(values, baseline)
    bound = 0.0
    for k in half:
        bound += abs(fn({**values, k: values[k] + half[k]}, baseline) - centre)
        bound += abs(fn(values, {**baseline, k: baseline[k] + half[k]}) - centre)
    return bound


def recompute_table(
    table: Mapping[str, Any], tolerance: float = DEFAULT_TOLERANCE, ties: str = "average"
) -> list[dict[str, Any]]:
    """Per row: Δ (``delta_m`` or ``delta_p``, per the table's ``delta``) and MR recomputed from its values.

    Each dict has ``method``, ``delta_name``, ``delta_reported``, ``delta`` (recomputed here),
    ``delta_diff`` (reported − recomputed), ``flagged`` (|diff| > ``tolerance``), ``rounding_bound`` (how far
    Δ can move when every printed value, and the printed Δ, is off by half a unit of its last digit),
    ``explained_by_rounding`` (|diff| ≤ that bound), ``mr`` (over the rows with complete values, STL
    excluded, ``ties`` as in ``mean_rank``), and the YAML's own ``delta_recomputed_listed`` and
    ``mr_recomputed_listed`` for comparison. Unavailable numbers are None.
    """
    rows = table.get("rows") or []
    metric_keys = [m["key"] for m in table.get("metrics", []) if "key" in m]
    directions = {m["key"]: m["direction"] for m in table.get("metrics", []) if "key" in m}
    complete = {
        i: r["values"]
        for i, r in enumerate(rows)
        if r.get("values") and metric_keys and all(k in r["values"] for k in metric_keys)
    }
    ranks = mean_rank({str(i): v for i, v in complete.items()}, directions, ties) if complete else {}
    delta = _table_delta(table)
    baseline = (table.get("baseline") or {}).get("values") or {}
    reported_half = 0.5 * 10.0 ** -max(
        [_decimals(float(r["delta_reported"])) for r in rows if r.get("delta_reported") is not None] or [2]
    )
    out = []
    for i, row in enumerate(rows):
        values = row.get("values")
        result: dict[str, Any] = {
            "method": row.get("method"),
            "delta_name": (table.get("delta") or {}).get("name"),
            "delta_reported": row.get("delta_reported"),
            "delta": None,
            "delta_diff": None,
            "flagged": False,
            "rounding_bound": None,
            "explained_by_rounding": None,
            "mr": ranks.get(str(i)),
            "delta_recomputed_listed": row.get("delta_recomputed"),
            "mr_recomputed_listed": row.get("mr_recomputed"),
        }
        if delta is not None and values:
            fn, dirs = delta
            result["delta"] = fn(values, baseline)
            if result["delta_reported"] is not None:
                half = _half_units([baseline, *(r["values"] for r in rows if r.get("values"))], dirs)
                bound = _rounding_bound(fn, values, baseline, half) + reported_half
                diff = float(result["delta_reported"]) - result["delta"]
                result.update(
                    delta_diff=diff,
                    flagged=abs(diff) > tolerance,
                    rounding_bound=bound,
                    explained_by_rounding=abs(diff) <= bound,
                )
        out.append(result)
    return out


@dataclass(frozen=True)
class PairedStats:
    """The per-seed difference ``a − b`` over matched seeds (docs/protocols.md: methods are compared paired by
    seed, same initialisation and data order): its mean, the Student-t 95% CI half-width of that mean (n − 1
    degrees of freedom; NaN for one seed), the number of seeds, whether the CI excludes 0, and the differences."""

    mean: float
    ci95_half_width: float
    n: int
    separable: bool
    differences: dict[int, float]


def paired_difference(a_per_seed: Mapping[int, float], b_per_seed: Mapping[int, float]) -> PairedStats:
    """Paired comparison of two methods' per-seed scores (e.g. Δm of a method and of EW, keyed by seed).

    Seeds must match exactly: a seed present on one side only raises ``ValueError`` naming it, since an
    unmatched seed would turn the paired comparison into an unpaired one. A NaN score gives a NaN mean and
    half-width, never separable. ``separable``: ``|mean| > half-width``, i.e. the 95% CI excludes zero.
    """
    only_a, only_b = sorted(set(a_per_seed) - set(b_per_seed)), sorted(set(b_per_seed) - set(a_per_seed))
    if only_a or only_b:
        raise ValueError(f"paired_difference: seeds must match; only in a: {only_a}, only in b: {only_b}")
    if not a_per_seed:
        raise ValueError("paired_difference needs at least one matched seed, got none")
    differences = {seed: float(a_per_seed[seed]) - float(b_per_seed[seed]) for seed in sorted(a_per_seed)}
    values = list(differences.values())
    mean, half = seed_mean(values), ci95_half_width(values)
    separable = bool(math.isfinite(mean) and math.isfinite(half) and abs(mean) > half)
    return PairedStats(mean, half, len(values), separable, differences)


def seeds_to_separate(std: float, difference: float, max_seeds: int = 1000) -> int:
    """The fewest seeds n >= 2 whose paired 95% CI half-width ``t_{0.975, n−1} · std / √n`` is below
    ``difference`` (the per-seed differences having sample std ``std``): the seeds a suite needs to separate
    a true difference of that size when the observed mean equals it."""
    if not (std >= 0 and difference > 0):
        raise ValueError(f"seeds_to_separate: need std >= 0 and difference > 0, got std={std}, difference={difference}")
    from scipy.stats import t

    for n in range(2, max_seeds + 1):
        if float(t.ppf(0.975, n - 1)) * std / math.sqrt(n) < difference:
            return n
    raise ValueError(f"seeds_to_separate: more than max_seeds={max_seeds} seeds needed (std={std}, "
                     f"difference={difference})")
