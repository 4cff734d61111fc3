"""The fixed-weight linear-scalarization sweep: its grid of weights and the front a method is judged against.

Xin et al., "Do Current Multi-Task Optimization Methods in Deep Learning Even Help?", NeurIPS 2022, §4: the
methods are compared with the Pareto front that a sweep of fixed loss weights traces out.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

SWEEP_METHOD = "fixed"
SWEEP_PREFIX = "sweep-"


def simplex_grid(num_tasks: int, points: int) -> list[tuple[float, ...]]:
    """Every weight vector ``T k / (points - 1)`` with integer ``k >= 0`` summing to ``points - 1``.

    The weights sum to ``T`` (EW's scale, so the centre of the grid, when it is on it, is EW itself); the order
    is lexicographic in ``k``, largest first weight first.
    """
    if num_tasks < 1 or points < 2:
        raise ValueError(f"simplex_grid needs num_tasks >= 1 and points >= 2, got {num_tasks}, {points}")
    n = points - 1
    grid = [k for k in itertools.product(range(n, -1, -1), repeat=num_tasks) if sum(k) == n]
    return [tuple(num_tasks * ki / n for ki in k) for k in grid]


def sweep_label(weights: Sequence[float]) -> str:
    return SWEEP_PREFIX + "-".join(f"{w:.2f}" for w in weights)


def dominates(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is at least as good as ``b`` on every key and strictly better on one (higher is better)."""
    return all(a[k] >= b[k] for k in b) and any(a[k] > b[k] for k in b)


def front(points: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The names of the non-dominated points (higher is better on every key), in input order."""
    return [n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)]


def task_scores(
    values: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, str],
    task_of: Mapping[str, str],
) -> dict[str, float]:
    """Per task, the mean over its metrics of the signed relative improvement over the baseline, in percent
    (higher is better; LibMTL's per-task Δp term)."""
    per_task: dict[str, list[float]] = {}
    for key, direction in directions.items():
        sign = 1.0 if direction == "higher" else -1.0
        per_task.setdefault(task_of[key], []).append(100.0 * sign * (values[key] - baseline[key]) / baseline[key])
    return {t: sum(v) / len(v) for t, v in per_task.items()}
