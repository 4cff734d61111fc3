"""Convergence of a group's runs: the last epoch's relative change of the validation loss (issue criterion: < 1%).

A run's change is ``(L_{E-1} - L_E) / L_{E-1}`` in percent (positive: still falling), from its two last evaluated
epochs; it is only defined when those are consecutive (``train.eval_final_epochs`` >= 2, or evaluation every epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

THRESHOLD = 1.0
"""Percent: a run whose last epoch moved its validation loss by more than this has not converged."""


def last_epoch_change(record: Mapping[str, Any]) -> float | None:
    """The last epoch's relative change of the validation loss in percent; None without two consecutive
    evaluated last epochs."""
    entries = record.get("epochs") or []
    if len(entries) < 2 or entries[-1]["epoch"] - entries[-2]["epoch"] != 1:
        return None
    before, last = entries[-2]["val_loss"], entries[-1]["val_loss"]
    if before is None or last is None or not math.isfinite(before) or before == 0:
        return math.nan
    return 100.0 * (before - last) / before


@dataclass(frozen=True)
class Convergence:
    """The largest last-epoch change over the measured runs (by absolute value) and which run it was."""

    measured: int
    unmeasured: int
    worst: float
    worst_run: str
    above: int
    """Runs whose |change| exceeds :data:`THRESHOLD` (NaN counts as above)."""


def convergence(records: Sequence[Mapping[str, Any]]) -> Convergence | None:
    """The group's :class:`Convergence`; None when no run has two consecutive evaluated last epochs."""
    changes = {r["run_id"]: last_epoch_change(r) for r in records}
    measured = {k: v for k, v in changes.items() if v is not None}
    if not measured:
        return None
    worst_run = max(measured, key=lambda k: math.inf if math.isnan(measured[k]) else abs(measured[k]))
    above = sum(not abs(v) <= THRESHOLD for v in measured.values())
    return Convergence(len(measured), len(changes) - len(measured), measured[worst_run], worst_run, above)


def convergence_line(summary: Convergence | None) -> str:
    """The leaderboard's sentence on convergence."""
    if summary is None:
        return ("Convergence: not measured (no run evaluated its last two epochs; set `train.eval_final_epochs: 2`).")
    line = (f"Convergence (last epoch's change of the validation loss, criterion under {THRESHOLD:g}%): largest "
            f"{summary.worst:+.2f}% (`{summary.worst_run}`) over {summary.measured} runs; "
            f"{summary.above} above the criterion")
    if summary.unmeasured:
        line += f"; {summary.unmeasured} runs not measured (their last two epochs were not both evaluated)"
    return line + "."
