"""The columns of the leaderboard's tables: each a ``Column(header, value, format)``, so a new column is one entry.

``value`` reads a row (a :class:`benchmark.report.summary.MethodRow`, or ``StlRow`` for the STL table) and
``format`` turns that value into the cell's text. :data:`SCORE_COLUMNS` follow the metric columns in the main
table; append one entry there to add a column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.records import RecordMetric
from benchmark.scoring import SeedStats

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
    """``mean ± std`` with ``decimals`` digits; ``n/a`` for no value."""

    def text(stats: SeedStats | None) -> str:
        return "n/a" if stats is None else f"{stats.mean:.{decimals}f} ± {stats.std:.{decimals}f}"

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


LABEL_COLUMNS = [
    Column("method", lambda row: f"{row.label} (plugin {row.plugin})" if row.plugin else row.label),
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


def leaderboard_columns(metrics: Sequence[RecordMetric]) -> list[Column]:
    """The main table: method, seeds, every metric, then :data:`SCORE_COLUMNS`."""
    return [*LABEL_COLUMNS, *metric_columns(metrics), *SCORE_COLUMNS]


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
