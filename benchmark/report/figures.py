"""The local figures, drawn from run records only (matplotlib, Agg) and saved beside ``leaderboard.md``:

* ``<stem>.png``: Δm − EW per method, paired by seed, with 95% CI bars (:func:`plot_leaderboard`);
* ``<stem>_pareto.png``: per-task relative change vs STL, one panel per task pair, Pareto-optimal rows marked;
* ``<stem>_weights.png``: task weights over the logged steps (``step_log``), one panel per method;
* ``<stem>_conflict.png``: mean gradient cosine matrix per method (``method_stats`` ``grad_cos/``);
* ``<stem>_curves.png``: per-epoch validation loss, training loss and test Δm vs STL;
* ``<stem>_priority.png``: CSO's channel shares per epoch (:func:`plot_priorities`).

The figures that show scores take the summaries of ``report/summary.py``, computed once per leaderboard write.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from benchmark.grad_stats import cosine_matrix
from benchmark.report.paired import REFERENCE, Pairing
from benchmark.report.summary import DatasetSummary, label_of
from benchmark.scoring import delta_m, seed_mean
from benchmark.sweep import front

FIGURES = {
    "": "Δm − EW per method, paired by seed (bars: 95% CI)",
    "pareto": "Per-task relative change vs STL (Pareto-optimal methods filled)",
    "weights": "Task weights over training",
    "conflict": "Gradient conflict: mean cosine of per-task gradients",
    "curves": "Training curves",
    "priority": "CSO: share of channels each task owns",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_leaderboard(
    summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str], rule: str = "last"
) -> Path | None:
    """A horizontal bar chart per dataset of each row's Δm − EW paired by seed (``report/paired.py``: mean with
    95% CI bars, EW the reference at 0, separable rows filled), or, for a dataset without an EW run, Δm vs STL
    (mean ± std over seeds); None if no Δm exists."""
    panels = [s for s in summaries if any(r.delta_m is not None for r in s.rows)]
    if not panels:
        return None
    plt = _pyplot()

    heights = [max(1.5, 0.4 * len(s.rows) + 1) for s in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, sum(heights)), squeeze=False)
    for ax, summary in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in summary.rows if r.delta_m is not None]
        if any(r.vs_ew is not None for r in rows):
            _paired_panel(ax, summary, rows, rule)
            continue
        ax.barh([r.label for r in rows], [r.delta_m.mean for r in rows], xerr=[r.delta_m.std for r in rows])
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("Δm% vs STL (lower is better); bars: std over seeds (unpaired, no EW run)")
        ax.set_title(f"{summary.dataset} — {summary.suite} ({rule})")
    return _save(fig, out_path)


def paired_bars(rows: Sequence[Any]) -> list[tuple[str, float, float, bool, int]]:
    """``(label, mean, CI half-width, separable, seeds paired)`` per row paired with EW (half-width 0 where there
    is no CI), EW's reference row at 0; a label carries the paired seed count ``n``. Rows sharing no seed with EW
    are left out."""
    bars = []
    for row in rows:
        if row.vs_ew == REFERENCE:
            bars.append((f"{row.label} (reference, n={len(row.seeds)})", 0.0, 0.0, False, len(row.seeds)))
        elif isinstance(row.vs_ew, Pairing) and row.vs_ew.stats is not None:
            stats = row.vs_ew.stats
            half = 0.0 if math.isnan(stats.ci95_half_width) else stats.ci95_half_width
            bars.append((f"{row.label} (n={stats.n}{', no CI' if stats.n < 2 else ''})", stats.mean, half,
                         stats.separable, stats.n))
    return bars


def _paired_panel(ax, summary: DatasetSummary, rows: Sequence[Any], rule: str) -> None:
    bars = paired_bars(rows)
    counts = sorted({b[4] for b in bars})
    ax.barh([b[0] for b in bars], [b[1] for b in bars], xerr=[b[2] for b in bars], capsize=3,
            color=["C0" if b[3] else "white" for b in bars], edgecolor="C0")
    ax.axvline(0.0, color="black", linewidth=0.8, label="EW (reference)")
    ax.invert_yaxis()
    ax.set_xlabel("Δm% − EW's Δm% on the same seed (lower is better)\n"
                  "bars: 95% CI of the paired mean; filled: the CI excludes 0", fontsize=8)
    seeds = f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds (n per row)"
    ax.set_title(f"{summary.dataset} — {summary.suite} ({rule}): paired by seed vs EW, {seeds}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


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
                curves[f"{r['suite']}/{r['dataset']}: {label_of(r)}"][t].append(series)
    if not curves:
        return None
    plt = _pyplot()

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


def task_changes(summaries: Sequence[DatasetSummary]) -> dict[str, dict[str, dict[str, float]]]:
    """Per ``suite/dataset`` and method row: the relative change vs STL (%, Δm's sign: lower is better) of each
    task, ``(100/K_t) Σ_k s_k (M_k − B_k)/B_k`` over the task's metrics, on the seed means the leaderboard
    shows. Tasks without a complete STL baseline are left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for summary in summaries:
        by_task: dict[str, list] = defaultdict(list)
        for spec in summary.metrics:
            by_task[spec.task].append(spec)
        tasks = {t: specs for t, specs in by_task.items() if all(s.key in summary.baseline for s in specs)}
        if not tasks:
            continue
        out[f"{summary.suite}/{summary.dataset}"] = {
            row.label: {
                t: delta_m({s.key: row.metrics[s.key].mean for s in specs},
                           {s.key: summary.baseline[s.key] for s in specs}, {s.key: s.direction for s in specs})
                for t, specs in tasks.items()
            }
            for row in summary.rows
        }
    return out


def pareto_optimal(points: Mapping[str, Mapping[str, float]]) -> set[str]:
    """The labels no other point dominates (lower or equal on every task, lower on one): the sweep's
    :func:`benchmark.sweep.front` (higher is better) of the negated changes."""
    return set(front({k: {t: -v for t, v in p.items()} for k, p in points.items()}))


def plot_pareto(summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str], rule: str = "last"):
    """Scatter of per-task relative change vs STL for every task pair; None without two tasks with a baseline."""
    groups = {g: rows for g, rows in task_changes(summaries).items()
              if rows and len(next(iter(rows.values()))) >= 2}
    if not groups:
        return None
    plt = _pyplot()
    panels = [(g, a, b) for g, rows in groups.items() for a, b in combinations(next(iter(rows.values())), 2)]
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 4 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (group, a, b) in zip(axes.flat, panels):
        points = groups[group]
        front = pareto_optimal(points)
        for label, p in sorted(points.items()):
            ax.scatter(p[a], p[b], marker="o", facecolors="C0" if label in front else "none", edgecolors="C0")
            ax.annotate(label, (p[a], p[b]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.axvline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel(f"{a}: Δ% vs STL (lower is better)")
        ax.set_ylabel(f"{b}: Δ% vs STL")
        ax.set_title(f"{group} ({rule})", fontsize=9)
    return _save(fig, out_path)


def _tasks(record: Mapping[str, Any]) -> list[str]:
    return [t["name"] for t in record.get("tasks", [])]


def _by_method(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list] = defaultdict(list)
    for r in records:
        if r.get("kind") == "mtl":
            groups[f"{r['suite']}/{r['dataset']}: {label_of(r)}"].append(r)
    return dict(sorted(groups.items()))


def weight_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Per method: each task's weight at the logged batches (mean over the seeds that logged that batch)."""
    out = {}
    for title, runs in _by_method(records).items():
        per_task = {}
        for task in _tasks(runs[0]):
            values: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                for p in (r.get("step_log") or {}).get("points", []):
                    if p.get(f"weight_{task}") is not None:
                        values[p["batch"]].append(p[f"weight_{task}"])
            if values:
                batches = sorted(values)
                per_task[task] = (batches, [seed_mean(values[b]) for b in batches])
        if per_task:
            out[title] = per_task
    return out


def plot_weights(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]):
    series = weight_series(records)
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.4 * len(series)), squeeze=False)
    for ax, (title, per_task) in zip(axes[:, 0], series.items()):
        for task, (batches, values) in per_task.items():
            ax.plot(batches, values, label=task)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("weight")
        ax.legend(fontsize=7)
    return _save(fig, out_path)


def conflict_matrices(records: Sequence[Mapping[str, Any]]):
    """Per method with at least two tasks: (tasks, mean over seeds of each run's mean cosine matrix)."""
    import torch

    out = {}
    for title, runs in _by_method(records).items():
        tasks = _tasks(runs[0])
        if len(tasks) < 2:
            continue
        mats = [cosine_matrix({k: v["mean"] for k, v in (r.get("method_stats") or {}).items()
                               if isinstance(v, Mapping) and "mean" in v}, tasks) for r in runs]
        mean = torch.stack(mats).mean(dim=0)
        if not torch.isnan(mean[~torch.eye(len(tasks), dtype=torch.bool)]).all():
            out[title] = (tasks, mean)
    return out


def plot_conflict(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]):
    mats = conflict_matrices(records)
    if not mats:
        return None
    plt = _pyplot()
    cols = min(3, len(mats))
    rows_n = math.ceil(len(mats) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.8 * cols, 3.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(mats):]:
        ax.set_visible(False)
    for ax, (title, (tasks, mat)) in zip(axes.flat, mats.items()):
        image = ax.imshow(mat.numpy(), vmin=-1, vmax=1, cmap="RdBu")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                if not math.isnan(float(mat[i, j])):
                    value = float(mat[i, j])
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(value) > 0.6 else "black")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, out_path)


def epoch_curves(
    records: Sequence[Mapping[str, Any]], summaries: Sequence[DatasetSummary]
) -> dict[str, dict[str, list[float]]]:
    """Per method, seed means per epoch of ``val_loss``, ``train_loss`` (sum of the epoch-mean task losses) and,
    when the STL baseline is complete, ``test_delta_m`` (each epoch's test metrics vs the leaderboard's
    baseline)."""
    baselines = {(s.suite, s.dataset): (s.baseline, {m.key: m.direction for m in s.metrics})
                 for s in summaries}
    out = {}
    for title, runs in _by_method(records).items():
        baseline, directions = baselines[(runs[0]["suite"], runs[0]["dataset"])]
        complete = bool(directions) and all(k in baseline for k in directions)
        curves: dict[str, list[list[float]]] = defaultdict(list)
        for r in runs:
            epochs = r["epochs"]
            curves["val_loss"].append([e["val_loss"] for e in epochs])
            losses = [[v for k, v in (e.get("method_stats") or {}).items() if k.startswith("loss_")] for e in epochs]
            if all(losses):
                curves["train_loss"].append([sum(v) for v in losses])
            if complete:
                curves["test_delta_m"].append([delta_m(e["test"], baseline, directions) for e in epochs])
        out[title] = {k: [seed_mean([s[e] for s in v]) for e in range(min(map(len, v)))]
                      for k, v in curves.items() if len(v) == len(runs)}
    return out


def plot_curves(
    records: Sequence[Mapping[str, Any]], summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str]
):
    curves = epoch_curves(records, summaries)
    kinds = [k for k in ("val_loss", "train_loss", "test_delta_m") if any(k in c for c in curves.values())]
    if not kinds:
        return None
    plt = _pyplot()
    names = {"val_loss": "validation loss", "train_loss": "training loss (sum over tasks)",
             "test_delta_m": "test Δm% vs STL"}
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for title, per_kind in curves.items():
            if kind in per_kind:
                ax.plot(range(len(per_kind[kind])), per_kind[kind], marker=".", label=title.split(": ", 1)[-1])
        ax.set_title(names[kind], fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    return _save(fig, out_path)


def write_figures(records: Sequence[Mapping[str, Any]], summaries: Sequence[DatasetSummary],
                  leaderboard: str | os.PathLike[str], rule: str = "last") -> list[tuple[str, Path]]:
    """Draw every figure the records (and their ``summaries`` under ``rule``) support beside ``leaderboard``;
    (caption, path) of those drawn."""
    board = Path(leaderboard)
    path = {kind: board.with_name(f"{board.stem}{'_' + kind if kind else ''}.png") for kind in FIGURES}
    drawn = {
        "": plot_leaderboard(summaries, path[""], rule),
        "pareto": plot_pareto(summaries, path["pareto"], rule),
        "weights": plot_weights(records, path["weights"]),
        "conflict": plot_conflict(records, path["conflict"]),
        "curves": plot_curves(records, summaries, path["curves"]),
        "priority": plot_priorities(records, path["priority"]),
    }
    return [(FIGURES[kind], p) for kind, p in drawn.items() if p is not None]


def figures_markdown(figures: Sequence[tuple[str, Path]], leaderboard: str | os.PathLike[str]) -> str:
    """A ``## Figures`` section linking ``figures`` relative to the leaderboard's folder."""
    if not figures:
        return ""
    base = Path(leaderboard).parent
    lines = ["", "## Figures", ""]
    for caption, path in figures:
        lines += [f"### {caption}", "", f"![{caption}]({os.path.relpath(path, base)})", ""]
    return "\n".join(lines)
