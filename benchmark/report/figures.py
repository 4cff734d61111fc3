"""The local figures, drawn from run records only (matplotlib, Agg) and saved beside ``leaderboard.md``:

* ``<stem>.png``: Δm − EW per method, paired by seed, with the paired table's 95% CI (:func:`plot_leaderboard`);
* ``<stem>_pareto.png``: per-task relative change vs STL, one panel per task pair on one shared scale, the
  better-than-STL quadrant shaded, Pareto-optimal rows filled;
* ``<stem>_weights.png``: task weights over the logged steps (``step_log``), small multiples on one y-scale;
* ``<stem>_conflict.png``: mean gradient cosine of each task pair per method (``method_stats`` ``grad_cos/``), the
  off-diagonal cells only, one colour scale;
* ``<stem>_curves.png``: per-epoch validation loss, training loss and test Δm vs STL;
* ``<stem>_priority.png``: CSO's channel shares per epoch against the even split 1/T (:func:`plot_priorities`).

Every figure has one legend, outside the data, and states its seed count; labels are placed by
:func:`place_labels` so that no two overlap (``tests/test_plots.py`` checks each figure's text boxes). The figures
that show scores take the summaries of ``report/summary.py``, computed once per leaderboard write.
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
from benchmark.report.summary import EW_METHOD, DatasetSummary, label_of
from benchmark.scoring import delta_m, seed_mean
from benchmark.sweep import front

FIGURES = {
    "": "Δm vs STL per method (95% CI)",
    "pareto": "Per-task relative change vs STL (Pareto-optimal methods filled)",
    "weights": "Task weights over training",
    "conflict": "Gradient conflict: mean cosine of per-task gradients",
    "curves": "Training curves",
    "priority": "CSO: share of channels each task owns",
}
DPI = 120
REFERENCE_COLOR = "black"
BETTER_COLOR = "#2ca02c"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as laid out by :func:`_arrange` (no layout pass here: it would move the placed labels)."""
    import matplotlib.pyplot as plt

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **share):
    plt = _pyplot()
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False, dpi=DPI, **share)


def _arrange(fig, title=None, legend=None, right_space: float = 0.0) -> None:
    """Tight layout of the axes in the room the suptitle (top) and the figure legend (right) leave; nothing moves
    after this, so labels placed later stay where they were put."""
    renderer = fig.canvas.get_renderer()
    right = 1.0 - right_space
    if legend is not None:
        right -= legend.get_window_extent(renderer).width / fig.bbox.width + 0.01
    top = 1.0
    if title is not None:
        top -= title.get_window_extent(renderer).height / fig.bbox.height + 0.02
    fig.tight_layout(rect=(0.0, 0.0, right, top))


def _legend(fig, handles, fontsize: float = 8):
    """The figure's one legend, at its right edge, outside every axes (``_arrange`` keeps the room)."""
    return fig.legend(handles=handles, loc="center right", bbox_to_anchor=(1.0, 0.5), fontsize=fontsize,
                      frameon=False)


def _title(fig, text: str):
    return fig.suptitle(text, fontsize=10)


def seed_text(counts: Sequence[int]) -> str:
    """``2 seeds`` (or ``1–3 seeds`` when the rows differ) for a caption."""
    low, high = min(counts), max(counts)
    span = str(low) if low == high else f"{low}–{high}"
    return f"{span} seed{'' if span == '1' else 's'}"


def method_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per method label, the same in every figure: EW (the reference) black, the others from tab10
    (tab20 beyond ten) in sorted order."""
    import matplotlib

    others = sorted(label for label in set(labels) if label != EW_METHOD)
    cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
    colors = {label: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, label in enumerate(others)}
    return {**colors, EW_METHOD: REFERENCE_COLOR} if EW_METHOD in labels else colors


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


_RINGS = (4, 9, 15, 22, 31, 42)
_LEADER_FROM = 15
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _aim(note, ring: float, dx: int, dy: int) -> None:
    note.xyann = (dx * ring, dy * ring)
    note.set_horizontalalignment({1: "left", -1: "right", 0: "center"}[dx])
    note.set_verticalalignment({1: "bottom", -1: "top", 0: "center"}[dy])


def place_labels(ax, points: Sequence[tuple[str, float, float]], fontsize: float = 7) -> list:
    """Annotate each ``(label, x, y)`` of ``ax`` at the first offset, on rings growing around its point, where the
    label's box meets no other label and no point's marker, and stays inside the axes; where none is free, the
    offset of least overlap. Far labels get a leader line. Call once the layout is final (:func:`_arrange`)."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = 4 * ax.figure.dpi / 72
    centres = [ax.transData.transform((x, y)) for _, x, y in points]
    taken = [Bbox.from_bounds(cx - radius, cy - radius, 2 * radius, 2 * radius) for cx, cy in centres]
    placed = []
    for label, x, y in points:
        probe = ax.annotate(label, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=fontsize)
        best = None
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                _aim(probe, ring, dx, dy)
                probe.update_positions(renderer)
                box = Text.get_window_extent(probe, renderer)
                outside = box.width * box.height - _overlap(box, frame)
                cost = outside + sum(_overlap(box, other) for other in taken)
                if best is None or cost < best[0]:
                    best = (cost, ring, dx, dy, box)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        probe.remove()
        _, ring, dx, dy, box = best
        leader = {"arrowstyle": "-", "color": "grey", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}
        note = ax.annotate(label, (x, y), xytext=(dx * ring, dy * ring), textcoords="offset points", fontsize=fontsize,
                           arrowprops=leader if ring >= _LEADER_FROM else None)
        _aim(note, ring, dx, dy)
        taken.append(box)
        placed.append(note)
    return placed


def delta_m_bars(summary: DatasetSummary) -> list[tuple[str, float, float, bool, int]]:
    """The rows the Δm figure draws, in the table's order: (label, Δm mean, 95% CI half-width, filled, seeds), the
    numbers of the table's ``Δm%`` and ``Δm% 95% CI`` columns; every bar filled."""
    return [(r.label, r.delta_m.mean, r.delta_m.ci95, True, r.delta_m.n) for r in summary.rows if r.delta_m is not None]


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


def _is_reference(label: str) -> bool:
    """EW's bar (its label may carry a note in parentheses)."""
    return label.split(" (", 1)[0] == EW_METHOD


def plot_leaderboard(
    summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str], rule: str = "last"
) -> Path | None:
    """A horizontal bar chart per dataset: each row's Δm − EW paired by seed (:func:`paired_bars`, the paired
    table's mean and 95% CI; filled where the CI excludes 0), or, without an EW run, its Δm vs STL
    (:func:`delta_m_bars`); EW and the zero line marked. None if no bar exists."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = []
    for s in summaries:
        paired = any(r.vs_ew is not None for r in s.rows)
        panels.append((s, paired, paired_bars(s.rows) if paired else delta_m_bars(s)))
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    heights = [max(1.6, 0.32 * len(bars) + 1.0) for *_, bars in panels]
    fig, axes = _figure(7.5, sum(heights) + 0.6, len(panels), 1, gridspec_kw={"height_ratios": heights})
    counts = []
    for ax, (summary, paired, bars) in zip(axes[:, 0], panels, strict=True):
        labels = [b[0] for b in bars]
        errors = [0.0 if math.isnan(b[2]) else b[2] for b in bars]
        edges = [REFERENCE_COLOR if _is_reference(label) else "C0" for label in labels]
        faces = [edge if filled else "white" for edge, (*_, filled, _n) in zip(edges, bars, strict=True)]
        ax.barh(labels, [b[1] for b in bars], xerr=errors if any(errors) else None, color=faces, edgecolor=edges,
                alpha=0.85, height=0.65, error_kw={"elinewidth": 1.0, "capsize": 3, "ecolor": "dimgrey"})
        ax.axvline(0.0, color=REFERENCE_COLOR if paired else BETTER_COLOR, linewidth=1.2)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        for tick in ax.get_yticklabels():
            if _is_reference(tick.get_text()):
                tick.set_fontweight("bold")
        ax.set_xlabel("Δm − EW's Δm, same seed (%; lower is better)" if paired
                      else "Δm vs STL (%; lower is better; no EW run to pair with)")
        ax.set_title(f"{summary.dataset}, suite {summary.suite}", fontsize=9)
        ax.grid(axis="x", linewidth=0.3, alpha=0.6)
        counts += [b[4] for b in bars]
    interval = "95% CI" if max(counts) > 1 else "no CI from one seed"
    what = "paired by seed vs EW" if any(p for _, p, _ in panels) else "vs STL"
    title = _title(fig, f"Δm per method, {what}: mean over {seed_text(counts)}, {interval} ({rule})")
    ci = [Line2D([], [], color="dimgrey", marker="|", markersize=8, label="95% CI (Student t)")]
    legend = _legend(fig, [Patch(color="C0", alpha=0.85, label="mean (filled: CI excludes 0)"),
                           Patch(color=REFERENCE_COLOR, alpha=0.85, label="EW (reference)"),
                           *(ci if max(counts) > 1 else []),
                           Line2D([], [], color=BETTER_COLOR, label="zero: EW (paired) or STL")])
    _arrange(fig, title, legend)
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



def _pareto_limits(points: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """One range for both axes of every panel of a group, holding every point and STL's origin with a margin,
    so that the better-than-STL quadrant always shows."""
    values = [v for p in points.values() for v in p.values() if not math.isnan(v)] + [0.0]
    low, high = min(values), max(values)
    pad = 0.12 * max(high - low, 1e-9)
    return min(low, 0.0) - pad, max(high, 0.0) + pad


def plot_pareto(summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str], rule: str = "last"):
    """Scatter of per-task relative change vs STL for every task pair, every panel of a dataset on one shared
    scale, STL at the origin and the quadrant better than STL on both tasks shaded; None without two tasks with
    a baseline."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    groups = {g: rows for g, rows in task_changes(summaries).items()
              if rows and len(next(iter(rows.values()))) >= 2}
    if not groups:
        return None
    panels = [(g, a, b) for g, rows in groups.items() for a, b in combinations(next(iter(rows.values())), 2)]
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = _figure(4.2 * cols + 1.9, 4.0 * rows_n + 0.5, rows_n, cols)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = method_colors([label for rows in groups.values() for label in rows])
    for ax, (group, a, b) in zip(axes.flat, panels):
        low, high = _pareto_limits(groups[group])
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal", adjustable="box")
        ax.add_patch(Rectangle((low, low), -low, -low, color=BETTER_COLOR, alpha=0.10, linewidth=0, zorder=0))
        ax.axhline(0.0, color="grey", linewidth=0.6, zorder=1)
        ax.axvline(0.0, color="grey", linewidth=0.6, zorder=1)
        optimal = pareto_optimal(groups[group])
        for label, p in sorted(groups[group].items()):
            ax.scatter(p[a], p[b], s=36, marker="s" if label == EW_METHOD else "o", zorder=3, linewidths=1.2,
                       facecolors=colors[label] if label in optimal else "none", edgecolors=colors[label])
        ax.plot([0.0], [0.0], marker="*", markersize=11, color=REFERENCE_COLOR, linestyle="none", zorder=4)
        ax.set_xlabel(f"{a}: Δ vs STL (%; lower is better)", fontsize=8)
        ax.set_ylabel(f"{b}: Δ vs STL (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(groups) > 1:
            ax.set_title(group, fontsize=9)
    seeds = [len(r.seeds) for s in summaries for r in s.rows if f"{s.suite}/{s.dataset}" in groups]
    where = next(iter(groups)) if len(groups) == 1 else "per suite and dataset"
    title = _title(fig, f"Per-task change vs STL, {where}: mean over {seed_text(seeds)} ({rule}; lower is better)")
    legend = _legend(fig, [
        Line2D([], [], marker="o", color="grey", linestyle="none", label="Pareto-optimal\n(all tasks)"),
        Line2D([], [], marker="o", color="grey", markerfacecolor="none", linestyle="none", label="dominated"),
        Line2D([], [], marker="s", color=REFERENCE_COLOR, markerfacecolor="none", linestyle="none",
               label="EW (reference)"),
        Line2D([], [], marker="*", color=REFERENCE_COLOR, markersize=11, linestyle="none", label="STL (origin)"),
        Patch(color=BETTER_COLOR, alpha=0.25, label="better than STL\non both tasks"),
    ])
    _arrange(fig, title, legend)
    for ax, (group, a, b) in zip(axes.flat, panels):
        place_labels(ax, [(label, p[a], p[b]) for label, p in sorted(groups[group].items())])
    return _save(fig, out_path)


def _tasks(record: Mapping[str, Any]) -> list[str]:
    return [t["name"] for t in record.get("tasks", [])]


def _by_method(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list] = defaultdict(list)
    for r in records:
        if r.get("kind") == "mtl":
            groups[f"{r['suite']}/{r['dataset']}: {label_of(r)}"].append(r)
    return dict(sorted(groups.items()))


def _split_title(title: str) -> tuple[str, str]:
    """``suite/dataset: label`` as (``suite/dataset``, ``label``)."""
    group, _, label = title.partition(": ")
    return group, label


def _panel_titles(titles: Sequence[str]) -> tuple[list[str], str]:
    """Per panel its method label (its full title when the panels span datasets), and what the suptitle names."""
    groups = {_split_title(t)[0] for t in titles}
    if len(groups) == 1:
        return [_split_title(t)[1] for t in titles], groups.pop()
    return list(titles), "per suite and dataset"


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


def _task_colors(tasks: Sequence[str]) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["Dark2"]
    return {t: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, t in enumerate(dict.fromkeys(tasks))}


def plot_weights(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]):
    """Small multiples of each method's task weights over the logged steps, on one shared x- and y-scale, with
    EW's weight of 1 marked; None if no run logged weights."""
    from matplotlib.lines import Line2D

    series = weight_series(records)
    if not series:
        return None
    seeds = [len(runs) for title, runs in _by_method(records).items() if title in series]
    cols = min(4, len(series))
    rows_n = math.ceil(len(series) / cols)
    fig, axes = _figure(2.7 * cols + 1.6, 2.1 * rows_n + 0.7, rows_n, cols, sharex=True, sharey=True)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    colors = _task_colors([t for per_task in series.values() for t in per_task])
    names, where = _panel_titles(list(series))
    for i, (ax, name, per_task) in enumerate(zip(axes.flat, names, series.values())):
        ax.axhline(1.0, color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
        for task, (batches, values) in per_task.items():
            ax.plot(batches, values, color=colors[task], linewidth=1.2)
        ax.set_title(name, fontsize=8, fontweight="bold" if name == EW_METHOD else "normal")
        ax.tick_params(labelsize=7, labelbottom=True, labelleft=i % cols == 0)
        if i % cols == 0:
            ax.set_ylabel("task weight", fontsize=8)
        if i + cols >= len(series):
            ax.set_xlabel("training step (batch)", fontsize=8)
        else:
            ax.tick_params(labelbottom=False)
        ax.grid(linewidth=0.3, alpha=0.5)
    low = min(0.0, *(v for per_task in series.values() for _, values in per_task.values() for v in values))
    high = max(1.0, *(v for per_task in series.values() for _, values in per_task.values() for v in values))
    axes[0, 0].set_ylim(low, high * 1.05)
    title = _title(fig, f"Task weights over training, {where}: mean over {seed_text(seeds)}")
    legend = _legend(fig, [*(Line2D([], [], color=c, label=t) for t, c in colors.items()),
                           Line2D([], [], color=REFERENCE_COLOR, linestyle="--", label="EW's weight (1)")])
    _arrange(fig, title, legend)
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


def conflict_table(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[str], list[str], list[list[float]]]]:
    """Per ``suite/dataset``: (method labels, task pairs ``a–b``, the mean cosine of each pair per method), the
    off-diagonal cells of :func:`conflict_matrices` (the matrix is symmetric and its diagonal is 1)."""
    out: dict[str, tuple[list[str], list[str], list[list[float]]]] = {}
    for title, (tasks, mat) in conflict_matrices(records).items():
        group, label = _split_title(title)
        pairs = list(combinations(range(len(tasks)), 2))
        names = [f"{tasks[i]}–{tasks[j]}" for i, j in pairs]
        labels, cols, values = out.setdefault(group, ([], names, []))
        if cols != names:
            raise ValueError(f"{title}: task pairs {names} differ from {cols} of the other methods of {group}")
        labels.append(label)
        values.append([float(mat[i, j]) for i, j in pairs])
    return out


def plot_conflict(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]):
    """One methods × task-pairs map per dataset of the mean gradient cosine, on one symmetric colour scale with
    one colorbar; None if no run logged cosines."""
    import matplotlib

    table = conflict_table(records)
    if not table:
        return None
    finite = [abs(v) for _, _, values in table.values() for row in values for v in row if not math.isnan(v)]
    limit = max(0.1, math.ceil(10 * max(finite)) / 10)
    norm = matplotlib.colors.Normalize(vmin=-limit, vmax=limit)
    widths = [max(2.6, 0.9 * len(pairs) + 1.6) for _, pairs, _ in table.values()]
    height = max(0.32 * len(labels) for labels, _, _ in table.values()) + 2.2
    fig, axes = _figure(sum(widths) + 1.6, height, 1, len(table), gridspec_kw={"width_ratios": widths})
    seeds = [len(runs) for title, runs in _by_method(records).items()
             if _split_title(title)[0] in table]
    image = None
    for ax, (group, (labels, pairs, values)) in zip(axes[0], table.items()):
        image = ax.imshow(values, norm=norm, cmap="RdBu", aspect="auto")
        ax.set_xticks(range(len(pairs)), pairs, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for tick in ax.get_yticklabels():
            if tick.get_text() == EW_METHOD:
                tick.set_fontweight("bold")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                text = "n/a" if math.isnan(value) else f"{value:+.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 * limit else "black")
        ax.set_xlabel("task pair", fontsize=8)
        if len(table) > 1:
            ax.set_title(group, fontsize=9)
    where = next(iter(table)) if len(table) == 1 else "per suite and dataset"
    title = _title(fig, f"Mean cosine of per-task gradients, {where}: mean over {seed_text(seeds)}\n"
                        "(below 0: the tasks' gradients conflict)")
    _arrange(fig, title, right_space=0.16)
    box = axes[0, -1].get_position()
    cax = fig.add_axes((box.x1 + 0.03, box.y0, 0.02, box.height))
    fig.colorbar(image, cax=cax).set_label("cosine similarity", fontsize=8)
    cax.tick_params(labelsize=7)
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


CURVE_AXES = {"val_loss": ("Validation loss", "loss (sum over tasks, per batch)"),
              "train_loss": ("Training loss", "loss (sum over tasks, epoch mean)"),
              "test_delta_m": ("Test Δm vs STL", "Δm (%; lower is better)")}


def plot_curves(
    records: Sequence[Mapping[str, Any]], summaries: Sequence[DatasetSummary], out_path: str | os.PathLike[str]
):
    """Per-epoch curves, one row per dataset and one column per quantity, one colour per method (EW black),
    STL's Δm = 0 marked, one legend; None without curves."""
    from matplotlib.lines import Line2D

    curves = epoch_curves(records, summaries)
    kinds = [k for k in CURVE_AXES if any(k in c for c in curves.values())]
    if not kinds:
        return None
    groups = list(dict.fromkeys(_split_title(t)[0] for t in curves))
    colors = method_colors([_split_title(t)[1] for t in curves])
    fig, axes = _figure(4.0 * len(kinds) + 1.9, 3.2 * len(groups) + 0.6, len(groups), len(kinds))
    for row, group in enumerate(groups):
        for ax, kind in zip(axes[row], kinds):
            for title, per_kind in curves.items():
                group_of, label = _split_title(title)
                if group_of == group and kind in per_kind:
                    values = per_kind[kind]
                    ax.plot(range(1, len(values) + 1), values, marker=".", color=colors[label],
                            linewidth=1.8 if label == EW_METHOD else 1.0, zorder=3 if label == EW_METHOD else 2)
            if kind == "test_delta_m":
                ax.axhline(0.0, color=BETTER_COLOR, linewidth=1.0)
            _integer_epochs(ax)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel(CURVE_AXES[kind][1], fontsize=8)
            ax.set_title(CURVE_AXES[kind][0] + (f", {group}" if len(groups) > 1 else ""), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(linewidth=0.3, alpha=0.5)
    seeds = [len(runs) for title, runs in _by_method(records).items() if title in curves]
    where = groups[0] if len(groups) == 1 else "per suite and dataset"
    title = _title(fig, f"Training curves, {where}: mean over {seed_text(seeds)}")
    handles = [Line2D([], [], color=c, marker=".", linewidth=1.8 if label == EW_METHOD else 1.0,
                      label=f"{label} (reference)" if label == EW_METHOD else label)
               for label, c in sorted(colors.items(), key=lambda kv: (kv[0] != EW_METHOD, kv[0]))]
    if "test_delta_m" in kinds:
        handles.append(Line2D([], [], color=BETTER_COLOR, label="STL (Δm = 0)"))
    _arrange(fig, title, _legend(fig, handles, fontsize=7))
    return _save(fig, out_path)


def priority_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per ``suite/dataset: label`` that logs CSO's ``priority/<task>``: each task's share of channels per epoch,
    the mean over seeds (over the epochs every seed has)."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        epochs = [e.get("method_stats") or {} for e in r.get("epochs", [])]
        for t in _tasks(r):
            series = [e.get(f"priority/{t}") for e in epochs]
            if series and all(v is not None for v in series):
                curves[f"{r['suite']}/{r['dataset']}: {label_of(r)}"][t].append(series)
    return {title: {t: [seed_mean([run[e] for run in runs]) for e in range(min(map(len, runs)))]
                    for t, runs in per_task.items()} for title, per_task in sorted(curves.items())}


def plot_priorities(records: Sequence[Mapping[str, Any]], out_path: str | os.PathLike[str]) -> Path | None:
    """How the share of channels owned by each task evolves per epoch (CSO's priority map; seed means), one
    panel per method variant that logs it, on one y-scale, against the even split 1/T; None if no run does."""
    from matplotlib.lines import Line2D

    curves = priority_series(records)
    if not curves:
        return None
    seeds = [len(runs) for title, runs in _by_method(records).items() if title in curves]
    cols = min(3, len(curves))
    rows_n = math.ceil(len(curves) / cols)
    fig, axes = _figure(3.8 * cols + 1.9, 3.0 * rows_n + 0.6, rows_n, cols, sharey=True)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    colors = _task_colors([t for per_task in curves.values() for t in per_task])
    names, where = _panel_titles(list(curves))
    even = set()
    for i, (ax, name, per_task) in enumerate(zip(axes.flat, names, curves.values())):
        even.add(len(per_task))
        ax.axhline(1.0 / len(per_task), color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
        for task, values in per_task.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, color=colors[task])
        _integer_epochs(ax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7, labelleft=i % cols == 0)
        if i % cols == 0:
            ax.set_ylabel("share of paired channels (fraction)", fontsize=8)
        ax.grid(linewidth=0.3, alpha=0.5)
    high = max(v for per_task in curves.values() for values in per_task.values() for v in values)
    axes[0, 0].set_ylim(0.0, max(high, *(1.0 / t for t in even)) * 1.15)
    title = _title(fig, f"CSO: share of channels each task owns, {where}: mean over {seed_text(seeds)}")
    split = ", ".join(f"1/{t}" for t in sorted(even))
    legend = _legend(fig, [*(Line2D([], [], color=c, marker="o", markersize=3, label=t) for t, c in colors.items()),
                           Line2D([], [], color=REFERENCE_COLOR, linestyle="--", label=f"even split 1/T ({split})")])
    _arrange(fig, title, legend)
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
