"""The columns of the leaderboard's tables: each a ``Column(header, value, format)``, so a new column is one entry.

``value`` reads a row (a :class:`benchmark.report.summary.MethodRow`, or ``StlRow`` for the STL table) and
``format`` turns that value into the cell's text. :data:`SCORE_COLUMNS` follow the metric columns in the main
table; append one entry there to add a column.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmark.records import RecordMetric
from benchmark.report.paired import NO_CONTROL, Pairing
from benchmark.scoring import SeedStats, seeds_to_separate

ARROWS = {"higher": "↑", "lower": "↓"}
ABSENT = "—"


@dataclass(frozen=True)
class Column:
    """One table column: its header, what it reads from a row, and how that is printed."""

    header: str
    value: Callable[[Any], Any]
    format: Callable[[Any], str] = str

    def cell(self, row: Any) -> str:
        return self.format(self.value(row))


def pm(decimals: int) -> Callable[[SeedStats | None], str]:
    """``mean ± std`` with ``decimals`` digits; the mean alone for one seed (no std exists); ``n/a`` for no value."""

    def text(stats: SeedStats | None) -> str:
        if stats is None:
            return "n/a"
        if stats.n == 1:
            return f"{stats.mean:.{decimals}f}"
        return f"{stats.mean:.{decimals}f} ± {stats.std:.{decimals}f}"

    return text


def ci95(stats: SeedStats | None) -> str:
    return "n/a" if stats is None or math.isnan(stats.ci95) else f"±{stats.ci95:.2f}"


def fixed(decimals: int) -> Callable[[float | None], str]:
    return lambda value: "n/a" if value is None else f"{value:.{decimals}f}"


def times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def metric_header(metric: RecordMetric, mark_auxiliary: bool = True) -> str:
    aux = " (aux)" if mark_auxiliary and metric.auxiliary else ""
    return f"{metric.key} {ARROWS.get(metric.direction, '')}{aux}".rstrip()


def metric_columns(metrics: Sequence[RecordMetric], mark_auxiliary: bool = True) -> list[Column]:
    """One column per metric: seed mean ± std at the metric's decimals; ``—`` where a row lacks the metric."""
    return [
        Column(metric_header(m, mark_auxiliary),
               lambda row, key=m.key: row.metrics.get(key, ABSENT),
               lambda stats, d=m.decimals: stats if stats is ABSENT else pm(d)(stats))
        for m in metrics
    ]


FEWER_SEEDS_MARK = "†"
"""Marks a row with fewer seeds than the table's most-seeded row (listed last, not ranked)."""


def method_cell(row: Any) -> str:
    """The row's label, with its plugin package and version, and the fewer-seeds mark."""
    text = f"{row.label} (plugin {row.plugin})" if row.plugin else row.label
    return f"{text} {FEWER_SEEDS_MARK}" if row.fewer_seeds else text


LABEL_COLUMNS = [
    Column("method", method_cell),
    Column("seeds", lambda row: len(row.seeds)),
]
SCORE_COLUMNS = [
    Column("Δm% ↓", lambda row: row.delta_m, pm(2)),
    Column("Δm% 95% CI", lambda row: row.delta_m, ci95),
    Column("Δp% ↑", lambda row: row.delta_p, pm(2)),
    Column("MR ↓", lambda row: row.mean_rank, fixed(2)),
    Column("step time ×EW", lambda row: row.step_time_ratio, times),
    Column("peak mem ×EW", lambda row: row.memory_ratio, times),
]


def delta_m_header(higher_is_better: bool) -> str:
    """``Δm% ↓`` (the Maninis / Nash-MTL sign) or ``Δm% ↑`` (the CSO / Vandenhende sign)."""
    return f"Δm% {ARROWS['higher' if higher_is_better else 'lower']}"


def leaderboard_columns(metrics: Sequence[RecordMetric], higher_is_better: bool = False) -> list[Column]:
    """The main table: method, seeds, every metric, then :data:`SCORE_COLUMNS` (Δm's arrow in the scoring's sign)."""
    scores = [Column(delta_m_header(higher_is_better), c.value, c.format) if c.header == "Δm% ↓" else c
              for c in SCORE_COLUMNS]
    return [*LABEL_COLUMNS, *metric_columns(metrics), *scores]


def _pairing(text: Callable[[Pairing], str], marker: bool = True) -> Callable[[Pairing | str | None], str]:
    """A paired cell: ``text`` of a :class:`Pairing`; a marker string (``reference``, ...) as it is with
    ``marker``, else ``—``; ``—`` for no pairing; ``n/a`` when the two rows share no seed."""

    def cell(pairing: Pairing | str | None) -> str:
        if pairing is None or (isinstance(pairing, str) and not marker):
            return ABSENT
        if isinstance(pairing, str):
            return pairing
        return "n/a (no common seed)" if pairing.stats is None else text(pairing)

    return cell


def paired_seeds(pairing: Pairing) -> str:
    """The number of seeds paired and, if some could not be, which: paired on the common seeds only."""
    gaps = []
    if pairing.only_reference:
        gaps.append(f"{pairing.reference} seed {', '.join(map(str, pairing.only_reference))} not run here")
    if pairing.only_here:
        gaps.append(f"seed {', '.join(map(str, pairing.only_here))} not run by {pairing.reference}")
    return str(len(pairing.seeds)) + (f" (common seeds only: {'; '.join(gaps)})" if gaps else "")


def control_label(pairing: Pairing | str | None) -> str:
    if pairing is None:
        return ABSENT
    if isinstance(pairing, Pairing):
        return pairing.reference
    return "**missing**" if pairing == NO_CONTROL else f"({pairing})"


def per_seed(pairing: Pairing) -> str:
    return ", ".join(f"{seed}: {value:+.2f}" for seed, value in pairing.stats.differences.items())


def paired_mean_ci(pairing: Pairing) -> str:
    """``mean [low, high]``: the paired mean and its Student-t 95% CI; ``(1 seed: no CI)`` for one pair."""
    mean, half = pairing.stats.mean, pairing.stats.ci95_half_width
    if math.isnan(mean):
        return "nan"
    if math.isnan(half):
        return f"{mean:+.2f} ({pairing.stats.n} seed: no CI)"
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def separable(pairing: Pairing, higher_is_better: bool = False) -> str:
    """``yes, better`` / ``yes, worse`` when the 95% CI excludes 0 (in Δm's sign), else ``no``."""
    stats = pairing.stats
    if stats.n < 2 or math.isnan(stats.mean):
        return "n/a"
    if not stats.separable:
        return "no"
    return "**yes, better**" if (stats.mean > 0) == higher_is_better else "**yes, worse**"


SEPARATION_TARGET = 2.0
"""The Δm difference (points) the default suite is meant to separate (issue 12)."""


def seeds_for_target(pairing: Pairing) -> str:
    """The seeds whose paired 95% CI would be narrower than ±:data:`SEPARATION_TARGET` at this spread of the
    per-seed differences (``benchmark.scoring.seeds_to_separate``)."""
    values = list(pairing.stats.differences.values())
    if len(values) < 2 or any(math.isnan(v) for v in values):
        return "n/a"
    spread = statistics.stdev(values)
    try:
        return str(seeds_to_separate(spread, SEPARATION_TARGET))
    except ValueError:
        return "> 1000"


PAIRED_COLUMNS = [
    Column("method", lambda row: row.label),
    Column("paired seeds vs EW", lambda row: row.vs_ew, _pairing(paired_seeds)),
    Column("Δm − EW per seed", lambda row: row.vs_ew, _pairing(per_seed, marker=False)),
    Column("Δm − EW ↓ mean [95% CI]", lambda row: row.vs_ew, _pairing(paired_mean_ci)),
    Column("separable from EW", lambda row: row.vs_ew, _pairing(separable, marker=False)),
    Column(f"seeds to separate {SEPARATION_TARGET:g} points", lambda row: row.vs_ew,
           _pairing(seeds_for_target, marker=False)),
    Column("control", lambda row: row.vs_control, control_label),
    Column("paired seeds vs control", lambda row: row.vs_control, _pairing(paired_seeds, marker=False)),
    Column("Δm − control ↓ mean [95% CI]", lambda row: row.vs_control, _pairing(paired_mean_ci, marker=False)),
    Column("separable from control", lambda row: row.vs_control, _pairing(separable, marker=False)),
]
"""The paired table (``report/paired.py``): each row's per-seed Δm difference to EW, its mean and 95% CI, and
the same against the row's control (EW on its modified model) where it has one."""


def paired_columns(rows: Sequence[Any], higher_is_better: bool = False) -> list[Column]:
    """:data:`PAIRED_COLUMNS` in Δm's sign, without the control columns when no row is on a modified model."""
    columns = list(PAIRED_COLUMNS)
    if higher_is_better:
        mark = _pairing(partial(separable, higher_is_better=True), marker=False)
        columns = [Column(c.header.replace("↓", "↑"), c.value, mark if c.header.startswith("separable") else c.format)
                   for c in columns]
    if all(row.vs_control is None for row in rows):
        return [c for c in columns if "control" not in c.header]
    return columns


def sweep_columns(metrics: Sequence[RecordMetric], front: Sequence[str]) -> list[Column]:
    """The sweep table: weight vector, seeds, every metric (no aux mark), Δm, and whether it is on the front."""
    return [
        Column("weights", lambda row: row.label),
        Column("seeds", lambda row: len(row.seeds)),
        *metric_columns(metrics, mark_auxiliary=False),
        Column("Δm% ↓", lambda row: row.delta_m, pm(2)),
        Column("on the front", lambda row: "yes" if row.label in front else "no"),
    ]


def stl_columns(metrics: Sequence[RecordMetric]) -> list[Column]:
    """The single-task table: ``STL <task>``, seeds, every metric (``—`` where the task lacks it)."""
    return [
        Column("task", lambda row: f"STL {row.task}"),
        Column("seeds", lambda row: len(row.seeds)),
        *metric_columns(metrics),
    ]
